"""What the fuzz tests share: a tally of outcomes and the budgets of the short and long runs.

Every fuzz case ends in one of four ways: accepted (and then it must work: shapes, ranges, finite
numbers), refused with the clear error its category promises (``ConfigError``, a ValueError naming the
action, exit status 2), an *unclear crash* (any other exception, or a clear one with a message that does
not say what is wrong), or a *silent acceptance* (bad input that went through). The short runs, in the
default suite, fail at the first bad case so hypothesis shrinks it; the long runs (``-m slow``) count
every outcome, print the counts and then require the bad ones to be zero.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

from hypothesis import HealthCheck, settings

ACCEPTED, REFUSED = "accepted", "refused"
UNCLEAR_CRASH, SILENT_ACCEPTANCE, NON_FINITE = "unclear crashes", "silent acceptances", "non-finite values"
BAD = (UNCLEAR_CRASH, SILENT_ACCEPTANCE, NON_FINITE)

# examples per property: small in the default suite, large in the long run (FUZZ_EXAMPLES overrides it)
SHORT = settings(max_examples=15, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                        HealthCheck.filter_too_much, HealthCheck.data_too_large])
LONG = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "1000")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.filter_too_much, HealthCheck.data_too_large])


class FuzzFailure(AssertionError):
    """A bad outcome in a short run: hypothesis shrinks the case that raised it."""


@dataclass
class Tally:
    """Outcome counts of one long run, with the first few bad cases of each kind for the report."""

    name: str
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    strict: bool = False  # short runs: raise at the first bad outcome

    def record(self, outcome: str, case: object = None, detail: str = "") -> None:
        self.counts[outcome] += 1
        if outcome in BAD:
            text = f"{str(case)[:200]} -> {detail[:300]}"
            if self.strict:
                raise FuzzFailure(f"{outcome}: {text}")
            self.examples.setdefault(outcome, [])
            if len(self.examples[outcome]) < 5:
                self.examples[outcome].append(text)

    @property
    def cases(self) -> int:
        return sum(self.counts.values())

    def report(self) -> str:
        lines = [f"fuzz {self.name}: {self.cases} cases run, {self.counts[ACCEPTED]} accepted, "
                 f"{self.counts[REFUSED]} refused clearly; "
                 + ", ".join(f"{self.counts[kind]} {kind}" for kind in BAD)]
        for kind, cases in self.examples.items():
            lines.extend(f"  {kind}: {case}" for case in cases)
        return "\n".join(lines)

    def assert_clean(self) -> None:
        print(self.report())
        assert not any(self.counts[kind] for kind in BAD), self.report()

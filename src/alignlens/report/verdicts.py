"""Reading a Δ's bootstrap interval, and the verdict on the paper's claim, in words.

An interval is read as a test only when it is one (`paired.untestable`: at least `paired.MIN_ITEMS`
items, a discordant item, non-zero width); otherwise every text and table says "not testable (n=…)"
and shows no interval. The paper's claim (alignment improves accuracy across languages, including
untrained ones) is judged from the macro Δ intervals over all languages and over the untrained ones
(`claim_text`), on the primary metric: ROC-AUC for two-label tasks (threshold-free: a shift of the
label prior moves accuracy, not AUC), accuracy otherwise; every interval comes from the
label-stratified item-cluster bootstrap (`paired.cluster_bootstrap_delta`). The claim "does not
hold" only where a testable interval lies at or below 0; an interval that includes 0 (or an
accuracy gain that comes with a label-prior shift) is "inconclusive", with the smallest effect the
test could have detected (MDE at 80% power); an interval that is no test makes it "not testable".
Other pairs of runs get the same numbers with no verdict (`neutral_text`).
"""

from __future__ import annotations

from alignlens.paired import untestable
from alignlens.report.layout import fmt


def ci_text(ci, sign: bool = True) -> str:
    """'[+1.0, +5.0]' (percent points; without signs when not `sign`), '—' for no interval."""
    return "—" if not ci or ci[0] is None else f"[{fmt(ci[0], sign=sign)}, {fmt(ci[1], sign=sign)}]"


def lang_untestable(t: dict) -> str:
    """Why a language's paired Δ interval is no test ("" when it is one): `paired.untestable` of
    its n, interval and discordant items."""
    return untestable(t["n"], t["delta_ci95"], t["mcnemar"]["b01"] + t["mcnemar"]["b10"])


def group_untestable(g: dict) -> str:
    """Why a group's macro Δ interval is no test ("" when it is one): `paired.untestable` of the
    items all its languages share and its interval (zero width when no language has a discordant item)."""
    return untestable(g["n_items"], g["ci95"])


def not_testable(n: int, why: str) -> str:
    """'not testable (n=3: fewer than 10 items)': how an interval that is no test is reported."""
    return f"not testable (n={n}: {why})"


def delta_ci(delta, ci, n: int, why: str, short: bool = False) -> str:
    """A Δ and its interval for a table cell: '+2.0 [−1.0, +5.0]', or '+0.0, not testable (n=1)'
    (`short`) / '+0.0, not testable (n=1: fewer than 10 items)' when the interval is no test."""
    if why:
        return f"{fmt(delta, sign=True)}, " + (f"not testable (n={n})" if short else not_testable(n, why))
    return f"{fmt(delta, sign=True)} {ci_text(ci)}"


def excludes0(ci, why: str = "") -> bool:
    """True when the interval is a test (`why` empty) and lies above or below 0."""
    return not why and bool(ci) and ci[0] is not None and (ci[0] > 0 or ci[1] < 0)


def side_text(ci) -> str:
    """What a (testable) Δ interval says about 0, in words."""
    return "lies above 0" if ci[0] > 0 else "lies below 0" if ci[1] < 0 else "includes 0"


def claim_side(ci) -> str:
    """Where a (testable) interval lies for the paper's claim of a gain: "above 0" (lo > 0: the claim
    holds there), "at or below 0" (hi <= 0: it excludes every gain, the claim does not hold) or
    "includes 0" (lo <= 0 < hi: inconclusive)."""
    return "above 0" if ci[0] > 0 else "at or below 0" if ci[1] <= 0 else "includes 0"


def delta_text(g: dict, what: str) -> str:
    """'Balanced accuracy 57.0% → 59.6% (Δ +2.6 points, 95% CI [..]; the interval includes 0)' for a
    group's macro Δ `g`, or with 'not testable (n=…)' in place of the interval."""
    ci, why = g["ci95"], group_untestable(g)
    interval = (not_testable(g["n_items"], why) if why
                else f"95% CI {ci_text(ci)}; the interval {'excludes' if excludes0(ci) else 'includes'} 0")  # fmt: skip
    return f"{what} {fmt(g['a'])}% → {fmt(g['b'])}% (Δ {fmt(g['delta'], sign=True)} points, {interval})"


#: What `claim_text` can say about the paper's claim for one task.
VERDICTS = ("holds", "does not hold", "inconclusive", "not testable")
CLAIM = "alignment improves accuracy across languages, including untrained ones"
METRIC_NAMES = {"auc": "ROC-AUC", "accuracy": "accuracy", "balanced_accuracy": "balanced accuracy"}


def primary_metric(groups: dict[str, dict]) -> str:
    """The metric the claim is judged on: "auc" when the groups have it (two-label tasks), else
    "accuracy"."""
    return "auc" if (groups.get("all") or {}).get("auc") is not None else "accuracy"


def _mde_text(g: dict) -> str:
    return (f"; effects smaller than ±{fmt(g['mde80'])} points would go undetected (MDE at 80% power)"
            if g.get("mde80") is not None else "")


def claim_text(task: str, groups: dict[str, dict], shift: dict | None, b_name: str = "aligned") -> tuple[str, str]:
    """(verdict, sentence) on the paper's claim -- alignment improves accuracy across languages,
    including untrained ones -- for one task, from the macro Δ intervals of the primary metric
    (`primary_metric`: ROC-AUC for two-label tasks, else accuracy) over all languages and over the
    untrained ones (for base vs aligned only: `Runs.paper_pair`; `b_name`: run b's name, whose
    manifest gives the trained languages). The verdict (one of `VERDICTS`):

    - "does not hold" only when a testable interval lies at or below 0 (it excludes every gain);
    - else "not testable" when an interval is no test (`group_untestable`: too few items, zero width);
    - else "inconclusive" when an interval includes 0 (with its MDE), or, judged on accuracy, the
      gain comes with a label-prior shift (`shift`: balanced accuracy or ROC-AUC falls, so the gain
      does not show better task ability);
    - else "holds" (every interval lies above 0)."""
    m = primary_metric(groups)
    name = METRIC_NAMES[m]
    acc = groups["all"][m]
    untr = (groups.get("untrained") or {}).get(m)
    parts = [(acc, f"the macro {name} Δ over all {len(acc['languages'])} languages")]
    if untr is not None:
        parts.append((untr, f"the macro {name} Δ over the {len(untr['languages'])} untrained languages"))
    said = {"at or below 0": [], "not testable": [], "includes 0": []}
    for g, what in parts:
        why = group_untestable(g)
        if why:
            said["not testable"].append(f"{what} is {fmt(g['delta'], sign=True)} points, {not_testable(g['n_items'], why)}")
            continue
        side = claim_side(g["ci95"])
        if side != "above 0":
            said[side].append(f"{what} is {fmt(g['delta'], sign=True)} points with 95% CI {ci_text(g['ci95'])}, an interval "
                              + ("at or below 0 (it excludes any gain)" if side == "at or below 0"
                                 else "that includes 0" + _mde_text(g)))  # fmt: skip
    shift_text = ("the accuracy change comes with a fall in balanced accuracy or ROC-AUC (see above), so it does not show "
                  "better task ability") if shift is not None and m == "accuracy" else None  # fmt: skip
    reasons = said["at or below 0"] + said["not testable"] + said["includes 0"] + ([shift_text] if shift_text else [])
    test = f" (macro {name} Δ, label-stratified item-cluster bootstrap)"
    if said["at or below 0"]:
        return "does not hold", f"The paper's claim ({CLAIM}) does not hold on these runs for {task}{test}: " + "; ".join(reasons) + "."
    if said["not testable"]:
        return "not testable", f"The paper's claim ({CLAIM}) cannot be tested on these runs for {task}{test}: " + "; ".join(reasons) + "."
    if reasons:
        return "inconclusive", (f"The paper's claim ({CLAIM}) is inconclusive on these runs for {task}{test} (neither shown "
                                f"nor refuted): " + "; ".join(reasons) + ".")  # fmt: skip
    if untr is None:
        return "holds", (f"Consistent with the first half of the paper's claim ({CLAIM}) for {task}: the macro {name} gain's "
                         f"interval lies above 0; the untrained half cannot be checked (the {b_name} run's manifest names no trained languages).")  # fmt: skip
    return "holds", (f"Consistent with the paper's claim ({CLAIM}) for {task}: the macro {name} gains over all languages "
                     "and over the untrained languages both have intervals above 0 (label-stratified item-cluster bootstrap).")  # fmt: skip


def neutral_text(diff_label: str, groups: dict[str, dict], shift: dict | None) -> str:
    """The numbers `claim_text` judges, stated with no verdict (runs other than base vs aligned):
    'control − aligned: macro ROC-AUC Δ over all 20 languages -2.1 points, 95% CI [..], the interval
    includes 0; ...'."""
    m = primary_metric(groups)
    name = METRIC_NAMES[m]
    acc = groups["all"][m]
    untr = (groups.get("untrained") or {}).get(m)

    def interval(g: dict) -> str:
        why = group_untestable(g)
        if why:
            return not_testable(g["n_items"], why)
        side = side_text(g["ci95"])
        return f"95% CI {ci_text(g['ci95'])}, the interval {side}" + (_mde_text(g) if side == "includes 0" else "")

    bits = [f"macro {name} Δ over all {len(acc['languages'])} languages {fmt(acc['delta'], sign=True)} points, {interval(acc)}"]
    if untr is not None:
        bits.append(f"over the {len(untr['languages'])} untrained languages {fmt(untr['delta'], sign=True)} points, {interval(untr)}")
    if shift is not None and m == "accuracy":
        bits.append("the accuracy change comes with a fall in balanced accuracy or ROC-AUC (see above)")
    return f"{diff_label}: " + "; ".join(bits) + "."

"""The model card written beside every exported model: what the model is, who trained it, how it was
protected, how well it did, where it came from (and how to check that), and what it must not be used for.

Pure: built from the exported model, the ledger's blocks up to the exported round and, when the model
comes from an ``hfl demo`` run folder, that run's ``summary.json``. Facts the inputs do not contain are
written as "not recorded", never guessed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from hfl.learning.export import ExportedModel
from hfl.ledger.block import Block

NOT_RECORDED = "not recorded"

LIMITATIONS = (
    "It was trained to support clinical judgement, not to replace it: check its predictions against "
    "local outcomes before relying on them.",
    "It predicts one outcome from the listed columns only, in the units the training data used; other "
    "units or a different definition of the outcome make its predictions meaningless.",
    "Its accuracy was measured on the training sites' own held-out patients. Patients unlike them "
    "(other age groups, case mix or recording practices) may be predicted worse.",
    "The decision threshold is 0.5 by default; the right threshold depends on the cost of missed and "
    "false alarms at your site.",
)


def model_card(
    m: ExportedModel, blocks: Sequence[Block], summary: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The card as plain data (written as JSON, and as Markdown by :func:`card_markdown`)."""
    if not blocks or blocks[-1].header.round != m.round:
        raise ValueError("the model card needs the ledger's blocks up to the exported round")
    head = blocks[-1]
    h = head.header
    trained = [b.header for b in blocks if b.header.round > 0]
    summary = summary or {}
    config = dict(summary.get("config") or {})
    rounds = [r for r in summary.get("rounds") or [] if r.get("committed") and r.get("round", 0) <= m.round]
    last = rounds[-1] if rounds else {}
    sites = list(summary.get("facilities") or [])
    dp = summary.get("dp")
    spent = [r["epsilon"] for r in rounds if r.get("epsilon") is not None]
    return {
        "model": m.describe(),
        "training": {
            "rounds": len(trained),
            "dataset": m.dataset,
            "facilities": len(sites) if sites else NOT_RECORDED,
            "specialties": dict(Counter(s["specialty"] for s in sites)) if sites else NOT_RECORDED,
            "facilities_per_round": [sum(x.bucket_counts) for x in trained],
            "simulated_attackers": sorted(s["node_id"] for s in sites if s.get("byzantine")) if sites else [],
        },
        "defences": {
            "aggregation_rule": h.rule,
            "rule_parameters": h.rule_params,
            "secure_aggregation": config.get("secagg", NOT_RECORDED),
            "rounds_with_flagged_groups": sum(1 for x in trained if x.flagged),
            "quarantined": sorted({f for r in rounds for f in r.get("quarantined") or []}),
        },
        "privacy": (
            {
                "differential_privacy": True,
                "mechanism": dp.get("mechanism"),
                "epsilon_spent_worst_facility": max(spent) if spent else NOT_RECORDED,
                "epsilon_budget": dp.get("epsilon_budget"),
                "delta": dp.get("delta"),
                "accountant": dp.get("accountant"),
            }
            if isinstance(dp, dict)
            else {"differential_privacy": False if summary else NOT_RECORDED}
        ),
        "evaluation": {
            "accuracy": last.get("accuracy", NOT_RECORDED),
            "log_loss": last.get("loss", NOT_RECORDED),
            "clinical": last.get("clinical") or NOT_RECORDED,
            "by_specialty": last.get("specialties") or NOT_RECORDED,
            "centralised_reference_accuracy": summary.get("centralized_accuracy", NOT_RECORDED)
            if summary
            else NOT_RECORDED,
            "measured_on": "the facilities' held-out test patients, pooled" if last else NOT_RECORDED,
        },
        "provenance": {
            "round": h.round,
            "block_hash": head.hash.hex(),
            "model_hash": h.model_hash.hex(),
            "committee": [c.node_id for c in h.committee],
            "quorum": h.quorum,
            "accepting_votes": sorted(v.validator_id for v in head.votes if v.accept),
            "how_to_check": (
                "hfl ledger verify <run folder or ledger.db> re-checks every block's signatures and "
                "recomputes every aggregate; the model file's parameters hash to model_hash "
                "(hfl predict refuses a file that does not)."
            ),
        },
        "limitations": list(LIMITATIONS),
    }


def _clinical_lines(c: Any) -> list[str]:
    if not isinstance(c, Mapping):
        return []
    return [
        f"- ROC AUC {c.get('auc')} (0.5 is chance); sensitivity {c.get('sensitivity')}, specificity "
        f"{c.get('specificity')}, PPV {c.get('ppv')}, NPV {c.get('npv')} at threshold 0.5; Brier score "
        f"{c.get('brier')}",
        f"- Baseline (every patient given the more common answer): accuracy {c.get('baseline_accuracy')}; "
        f"share with the outcome {c.get('prevalence')}",
    ]


def _specialty_lines(rows: Any) -> list[str]:
    """One line per specialty: its results over its own facilities, or why there are none."""
    if not isinstance(rows, list):
        return []
    lines = []
    for r in rows:
        if not isinstance(r, Mapping):
            continue
        if r.get("not_reported"):
            lines.append(f"- {r.get('specialty')}: not shown ({r.get('not_reported')})")
            continue
        clinical = r.get("clinical")
        c: Mapping[str, Any] = clinical if isinstance(clinical, Mapping) else {}
        lines.append(
            f"- {r.get('specialty')} ({r.get('facilities')} facilities): accuracy {r.get('accuracy')}, "
            f"ROC AUC {c.get('auc')}, baseline {c.get('baseline_accuracy')}"
        )
    return lines


def _parameters(params: Mapping[str, Any]) -> str:
    """The rule's parameters as " (clip_update=1.383, f=1)": numbers to 4 significant digits (the
    .card.json keeps them whole)."""
    if not params:
        return ""
    shown = (f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(params.items()))
    return f" ({', '.join(shown)})"


def _parameter_words(rule: str, params: Mapping[str, Any]) -> list[str]:
    """What the rule's parameters mean, for readers who are not engineers (sub-bullets)."""
    out = []
    f = params.get("f")
    if isinstance(f, int) and not isinstance(f, bool):
        if f == 0:
            plain = ", so the model was a plain average of the groups" if rule == "trimmed_mean" else ""
            out.append(
                "  - f = 0: in the last round the rule could set no group of sites aside as possibly "
                f"bad{plain}"
            )
        else:
            groups = "group" if f == 1 else "groups"
            out.append(
                f"  - f = {f}: in the last round the rule could set aside up to {f} {groups} of sites as "
                "possibly bad"
            )
    clip = params.get("clip_update")
    if isinstance(clip, int | float) and not isinstance(clip, bool):
        out.append(
            "  - clip_update: the longest update one site could send in the last round; a group whose "
            "updates added up to more than that per site was left out"
        )
    return out


def _yes_no(value: Any) -> str:
    return {True: "yes", False: "no"}.get(value, str(value)) if isinstance(value, bool) else str(value)


def card_markdown(card: Mapping[str, Any]) -> str:
    m, t, d, p, e, v = (
        card[k] for k in ("model", "training", "defences", "privacy", "evaluation", "provenance")
    )
    kind = {"logreg": "logistic regression", "mlp": "neural network with one hidden layer"}.get(
        m["kind"], m["kind"]
    )
    lines = [
        f"# Model card: {kind}, round {m['round']}",
        "",
        f"Predicts the probability of **{m['label']}** from {len(m['feature_names'])} columns, trained by "
        f"federated learning on `{m['dataset']}` without any patient record leaving its site.",
        "",
        "## Training",
        f"- Rounds: {t['rounds']}; facilities: {t['facilities']}"
        + (
            f" ({', '.join(f'{n} {s}' for s, n in sorted(t['specialties'].items()))})"
            if isinstance(t["specialties"], dict)
            else ""
        ),
        f"- Facilities per round: {', '.join(map(str, t['facilities_per_round'])) or 'none'}",
        f"- Input columns, in order: {', '.join(f'`{n}`' for n in m['feature_names'])}",
        f"- Scaling of the inputs: {m['scaling']}; decision threshold {m['threshold']}",
        "- Columns that may be left empty (missing): "
        + (
            ", ".join(f"`{n}`" for n in m["missing_allowed"])
            + "; a missing value is set to the centre of its column's scaling and the model is told it "
            "was missing (docs/data.md)"
            if m["missing_allowed"]
            else "none"
        ),
    ]
    if t["simulated_attackers"]:
        lines.append(f"- Simulated attackers in this run: {', '.join(t['simulated_attackers'])}")
    lines += [
        "",
        "## Defences",
        f"- Aggregation rule: `{d['aggregation_rule']}`" + _parameters(d["rule_parameters"]),
        *_parameter_words(d["aggregation_rule"], d["rule_parameters"] or {}),
        f"- Secure aggregation (sites' updates masked): {_yes_no(d['secure_aggregation'])}",
        f"- Rounds in which a group of sites was flagged: {d['rounds_with_flagged_groups']}",
        f"- Quarantined sites: {', '.join(d['quarantined']) or 'none'}",
        "",
        "## Privacy",
    ]
    if p.get("differential_privacy") is True:
        lines.append(
            f"- Differential privacy ({p['mechanism']}, {str(p['accountant']).upper()} accounting): the "
            f"worst-off site spent ε = {p['epsilon_spent_worst_facility']} of its budget "
            f"{p['epsilon_budget']} at δ = {p['delta']}."
        )
    else:
        lines.append(
            f"- Differential privacy: {'off' if p['differential_privacy'] is False else NOT_RECORDED}"
        )
    lines += [
        "",
        "## Evaluation",
        f"- Accuracy {e['accuracy']}, log-loss {e['log_loss']} ({e['measured_on']})",
        *_clinical_lines(e["clinical"]),
        *_specialty_lines(e.get("by_specialty")),
        f"- All training data pooled in one place would reach: {e['centralised_reference_accuracy']}",
        "",
        "## Provenance",
        f"- Ledger block {v['round']}: `{v['block_hash']}`",
        f"- Model hash: `{v['model_hash']}`",
        f"- Committee: {', '.join(v['committee'])}; quorum {v['quorum']}; accepted by "
        f"{', '.join(v['accepting_votes'])}",
        f"- How to check: {v['how_to_check']}",
        "",
        "## Limitations",
        *[f"- {x}" for x in card["limitations"]],
        "",
    ]
    return "\n".join(lines)

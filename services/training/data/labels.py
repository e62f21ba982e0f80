"""Label balance report for classification and sentiment datasets."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from services.training.data.example import Example

MAX_IMBALANCE = 5.0
MIN_PER_LABEL = 5


@dataclass(frozen=True, slots=True)
class LabelReport:
    """Training label counts (most frequent first), max/min count ratio, warnings, and the
    training labels the validation set never shows."""

    counts: dict[str, int] = field(default_factory=dict)
    imbalance_ratio: float | None = None
    warnings: list[str] = field(default_factory=list)
    unseen_in_validation: list[str] = field(default_factory=list)


def _count(examples: Iterable[Example]) -> Counter[str]:
    return Counter(ex.label for ex in examples if ex.label is not None)


def label_report(
    train: Iterable[Example],
    validation: Iterable[Example],
    *,
    max_imbalance: float = MAX_IMBALANCE,
    min_per_label: int = MIN_PER_LABEL,
) -> LabelReport:
    """Count labels; warn when max/min count > ``max_imbalance`` or a label has fewer than
    ``min_per_label`` training examples, and about validation labels absent from training."""
    return label_report_of_counts(
        _count(train), _count(validation), max_imbalance=max_imbalance, min_per_label=min_per_label
    )


def label_report_of_counts(
    counts: Counter[str],
    seen: Counter[str],
    *,
    max_imbalance: float = MAX_IMBALANCE,
    min_per_label: int = MIN_PER_LABEL,
) -> LabelReport:
    """:func:`label_report` from the training and validation label counts."""
    ordered = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    warnings: list[str] = []
    ratio = None
    if counts:
        (top, most), (bottom, least) = next(iter(ordered.items())), list(ordered.items())[-1]
        ratio = round(most / least, 3)
        if ratio > max_imbalance:
            warnings.append(
                f"labels are imbalanced: {top!r} has {most} examples, {bottom!r} has {least} "
                f"(ratio {ratio:g} > {max_imbalance:g})"
            )
        warnings += [
            f"label {label!r} has only {n} training example{'s' if n != 1 else ''} "
            f"(fewer than {min_per_label})"
            for label, n in ordered.items()
            if n < min_per_label
        ]
    warnings += [
        f"validation label {label!r} never appears in training" for label in sorted(seen - counts)
    ]
    unseen = [label for label in ordered if label not in seen]
    return LabelReport(ordered, ratio, warnings, unseen)

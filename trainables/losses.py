"""Task and knowledge-distillation losses for multi-label (VOC) and single-label data.

Shapes: logits [B, num_classes]; labels [B, num_classes] multi-hot (one-hot for single-label).
"""

from __future__ import annotations

from torch import Tensor
from torch.nn import functional as F

__all__ = ["DEFAULT_KD_ALPHA", "DEFAULT_KD_TEMPERATURE", "distillation_loss", "task_loss"]

#: The paper's distillation settings (Appendix C): temperature 4, KD weight 0.9.
DEFAULT_KD_TEMPERATURE = 4.0
DEFAULT_KD_ALPHA = 0.9


def task_loss(logits: Tensor, labels: Tensor, *, multi_label: bool = True) -> Tensor:
    """Binary cross-entropy per label (multi-label) or cross-entropy (single-label), batch mean."""
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits, labels)
    return F.cross_entropy(logits, labels.argmax(dim=1))


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    *,
    temperature: float = DEFAULT_KD_TEMPERATURE,
    alpha: float = DEFAULT_KD_ALPHA,
    multi_label: bool = True,
) -> Tensor:
    """Hinton's KD: ``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * task loss``.

    Multi-label: the KL is the per-label binary KL between sigmoid(t / T) and sigmoid(s / T),
    averaged over labels and images. Single-label: the KL between the softmax distributions,
    averaged over images.
    """
    if temperature <= 0:
        raise ValueError(f"temperature: must be positive, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha: must be in [0, 1], got {alpha}")
    s = student_logits / temperature
    t = teacher_logits.detach() / temperature
    if multi_label:
        p_t = t.sigmoid()
        # KL(Bern(p_t) || Bern(p_s)) with log-sigmoids for stability at large logits.
        kl = p_t * (F.logsigmoid(t) - F.logsigmoid(s)) + (1 - p_t) * (
            F.logsigmoid(-t) - F.logsigmoid(-s)
        )
        soft = kl.mean()
    else:
        soft = F.kl_div(
            F.log_softmax(s, dim=1), F.log_softmax(t, dim=1), reduction="batchmean", log_target=True
        )
    hard = task_loss(student_logits, labels, multi_label=multi_label)
    return alpha * temperature**2 * soft + (1 - alpha) * hard

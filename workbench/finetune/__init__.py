"""Fine-tune any CLIP that clip.load returns on image-text pairs; evaluate; WiSE-FT.

python -m workbench.finetune --data pairs.csv --model demo --out ft.ckpt [options]
"""

from .data import (
    PairBatches,
    Pairs,
    collection_pairs,
    folder_pairs,
    open_pairs,
    read_pairs,
    shapes_pairs,  # fmt: skip
    split,
)
from .evaluation import (
    LivePlot,
    plot_history,
    plot_wise_ft,
    recall_at_k,
    recall_hook,
    wise_ft,
    wise_ft_sweep,  # fmt: skip
    zero_shot_accuracy,
    zero_shot_hook,
)
from .loop import (
    AdamW,
    History,
    contrastive_loss,
    fine_tune,
    infonce,
    save,
    save_checkpoint,
    schedule,  # fmt: skip
    trainable,
    weight_decays,
)

__all__ = [
    "AdamW", "History", "LivePlot", "PairBatches", "Pairs", "collection_pairs", "contrastive_loss",
    "fine_tune", "folder_pairs", "infonce", "open_pairs", "plot_history", "plot_wise_ft",
    "read_pairs", "recall_at_k", "recall_hook", "save", "save_checkpoint", "schedule",
    "shapes_pairs", "split", "trainable", "weight_decays", "wise_ft", "wise_ft_sweep",
    "zero_shot_accuracy", "zero_shot_hook",
]  # fmt: skip

"""What the trainer needs to know about each task. Importing this costs nothing (no numpy,
no torch), so the command line can list the tasks in ``--help``."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["TaskSpec", "TASKS"]

NLI = {"entailment": 0, "not_entailment": 1}

SOURCES = ("generated", "glue", "wordnet", "text")
"""Where a task's examples come from: generated in the package, GLUE (Hub or local files), the WordNet
database installed on the machine, or a text file (causal LM)."""


@dataclass(frozen=True)
class TaskSpec:
    """What the trainer needs to know about a task."""

    name: str
    text_columns: tuple[str, ...]
    num_labels: int  # 1 means regression
    metrics: tuple[str, ...]  # the first is the task's headline metric
    glue_dir: str = ""  # folder name in GLUE's original distribution
    validation_split: str = "validation"
    tsv_columns: dict[str, str] = field(default_factory=dict)  # GLUE column -> Hub column
    tsv_header: bool = True
    tsv_names: tuple[str, ...] = ()  # column names for header-less TSVs (CoLA)
    label_map: dict[str, int] = field(default_factory=dict)  # GLUE string labels -> ints
    kind: str = "classification"  # or "causal-lm": next-token loss, perplexity
    source: str = "glue"
    """Where the examples come from, one of :data:`SOURCES`; ``load_task`` asks this, never the task's name."""
    learning_rates: dict[str, float] = field(default_factory=dict)
    """Each method's rate on this task where it was swept here (method -> lr); others take the method's own default."""

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"task {self.name!r}: source must be one of {SOURCES}")

    @property
    def main_metric(self) -> str:
        return self.metrics[0]


WORDNET_RATES = {"lora": 1e-2, "tlora": 1e-1, "head": 3e-2}
"""The main job's rates on wordnet-lexname: its sweep (studies/wordnet_lr_sweep.toml,
figures/wordnet/lr_sweep/results.json: best final accuracy at 3 epochs, seed 0; LoRA 0.737, TLoRA 0.647, head-only
0.545 tied with 0.1, the smaller taken)."""
HYPERNYM_RATES = {"lora": 3e-3, "tlora": 3e-2, "head": 0.3}
"""wordnet-hypernym's own sweep (studies/wordnet_hypernym_lr_sweep.toml, figures/wordnet/hypernym/lr_sweep/results.json:
seed 0; LoRA 0.833, TLoRA 0.738, head-only 0.677). Both adapters sit at chance from 1e-2 (LoRA) and 0.1 (TLoRA) up, so
wordnet-lexname's rates, borrowed before this sweep, were on the wrong side of that edge for a pair task."""

TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in [
        TaskSpec("default", ("sentence",), 2, ("accuracy",), source="generated"),
        TaskSpec("sst2", ("sentence",), 2, ("accuracy",), "SST-2"),
        TaskSpec(
            "cola", ("sentence",), 2, ("matthews_correlation", "accuracy"), "CoLA",
            tsv_header=False, tsv_names=("source", "label", "original_label", "sentence"),
        ),
        TaskSpec(
            "mrpc", ("sentence1", "sentence2"), 2, ("accuracy", "f1"), "MRPC",
            tsv_columns={"Quality": "label", "#1 String": "sentence1", "#2 String": "sentence2"},
        ),
        TaskSpec("qnli", ("question", "sentence"), 2, ("accuracy",), "QNLI", label_map=NLI),
        TaskSpec("rte", ("sentence1", "sentence2"), 2, ("accuracy",), "RTE", label_map=NLI),
        TaskSpec(
            "stsb", ("sentence1", "sentence2"), 1, ("pearson", "spearman"), "STS-B",
            tsv_columns={"score": "label"},
        ),
        TaskSpec(
            "mnli", ("premise", "hypothesis"), 3, ("accuracy",), "MNLI", "validation_matched",
            tsv_columns={"sentence1": "premise", "sentence2": "hypothesis", "gold_label": "label"},
            label_map={"entailment": 0, "neutral": 1, "contradiction": 2},
        ),
        TaskSpec(
            "qqp", ("question1", "question2"), 2, ("accuracy", "f1"), "QQP",
            tsv_columns={"is_duplicate": "label"},
        ),
        TaskSpec("lm", ("text",), 0, ("perplexity", "eval_loss"), kind="causal-lm", source="text"),
        TaskSpec("wordnet-lexname", ("sentence",), 24, ("accuracy",), source="wordnet", learning_rates=WORDNET_RATES),
        TaskSpec("wordnet-hypernym", ("sentence1", "sentence2"), 2, ("accuracy", "f1"), source="wordnet", learning_rates=HYPERNYM_RATES),
    ]
}

"""What the suite runs per mode: the CPU setting (default), ``--full`` (paper-like epochs) and ``--quick``.

Every number here is recorded in the results json, so a table always says how it was made.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autoprune.spec import FinetuneConfig
from bench.cache import VERSION_DIGITS, code_version, resolve_version
from bench.common import CACHE, CIFAR, RESULTS

ARCHS = ("resnet20", "resnet56", "cifar_mobilenetv2", "cifar_vgg16_bn")
BASELINE_SEED = 0  # every arch's reference model is trained once, with seed 0
METHODS = (
    "uniform:l1", "uniform:chip", "uniform:attribution", "global:taylor", "global:chip", "global:attribution",
    "nap:kfac", "itpruner:l1", "evolution:l1", "halp:taylor", "tp:magnitude", "tp:taylor", "tp:group_norm",
)  # fmt: skip
BUDGETS = "flops=0.5,flops=0.333"  # 2x and 3x MACs reduction
# Fidelity check (d): attribution against L1 at high compression, each under both allocators.
HIGH_METHODS = ("uniform:l1", "uniform:attribution", "global:l1", "global:attribution")
HIGH_BUDGETS = "flops=0.2"
# Widths in multiples of 8 (the product's --channel-step 8): onnxruntime's CPU kernels run odd
# widths slowly, so on MobileNetV2 most MACs-budget models with free widths were slower than unpruned.
STEP_METHODS = ("uniform:l1", "global:taylor")
STEP_BUDGETS = "flops=0.5"
CHANNEL_STEP = 8
LATENCY_BATCHES = (1, 64)


@dataclass(frozen=True)
class Recipe:
    """Per-arch training budget: the baseline's epochs, and every method's fine-tune."""

    baseline_epochs: int
    finetune_epochs: int
    finetune_max_steps: int | None = None  # cap on fine-tune steps per epoch (None: the whole train split)
    baseline_max_steps: int | None = None

    @property
    def finetune_tag(self) -> str:
        """The run directories' fine-tune part, e.g. ``e1`` or ``e1m100``."""
        return f"e{self.finetune_epochs}" + (f"m{self.finetune_max_steps}" if self.finetune_max_steps else "")


# CPU: about an hour of compute on 2 idle cores for the default (ResNet-20, one seed); ResNet-56
# trains 10 epochs and fine-tunes 100 steps (12.8k images) per run. MobileNetV2 and VGG-16-BN cost
# about 4.5 s per training step on one core (16 min an epoch), so on a CPU they get 3 epochs and 50
# fine-tune steps: enough to rank methods and time the pruned models, far from converged accuracy.
CPU_RECIPES = {
    "resnet20": Recipe(baseline_epochs=15, finetune_epochs=1),
    "resnet56": Recipe(baseline_epochs=10, finetune_epochs=1, finetune_max_steps=100),
    "cifar_mobilenetv2": Recipe(baseline_epochs=3, finetune_epochs=1, finetune_max_steps=50),
    "cifar_vgg16_bn": Recipe(baseline_epochs=3, finetune_epochs=1, finetune_max_steps=50),
}
# --full: paper-like schedules (200-epoch cosine baselines, 40-epoch fine-tunes), for a GPU machine.
FULL_RECIPES = {arch: Recipe(baseline_epochs=200, finetune_epochs=40) for arch in ARCHS}
# --quick: a smoke test on a data subset; its numbers mean nothing.
QUICK_RECIPES = {
    arch: Recipe(baseline_epochs=1, finetune_epochs=1, finetune_max_steps=1, baseline_max_steps=2) for arch in ARCHS
}


def baseline_config(recipe: Recipe) -> FinetuneConfig:
    """He et al.'s CIFAR recipe with a cosine schedule: SGD 0.9, lr 0.1, wd 5e-4, batch 128."""
    return FinetuneConfig(
        epochs=recipe.baseline_epochs, lr=0.1, batch_size=128, weight_decay=5e-4, distill=False,
        max_steps_per_epoch=recipe.baseline_max_steps,
    )  # fmt: skip


def finetune_config(recipe: Recipe) -> FinetuneConfig:
    """The same for every method: SGD lr 0.01 cosine, batch 128, distillation from the unpruned model."""
    return FinetuneConfig(
        epochs=recipe.finetune_epochs, lr=0.01, batch_size=128, max_steps_per_epoch=recipe.finetune_max_steps
    )


def baseline_recipe_text(recipe: Recipe) -> str:
    cap = f" (≤ {recipe.baseline_max_steps} steps each)" if recipe.baseline_max_steps else ""
    return (
        f"SGD momentum 0.9, lr 0.1 cosine, wd 5e-4, batch 128, {recipe.baseline_epochs} epochs{cap}, crop+flip, "
        "27k-image train subset"
    )


@dataclass(frozen=True)
class Settings:
    """Where one mode reads and writes, and how much work each run does.

    ``runs`` is the cache of one code version (``<mode's methods folder>/<first 16 hex digits>``):
    runs made by other code are never read from there.
    """

    mode: str  # "cpu", "full" or "quick"
    baselines: Path  # trained reference models
    runs: Path  # one directory per run, and the unpruned bundle per arch, of this code version
    results: Path
    data_ref: str
    recipes: dict[str, Recipe] = field(repr=False)
    latency_repeats: int
    code_version: str  # bench.cache.code_version(), or the older one --no-run --code-version tabulates

    @classmethod
    def make(cls, mode: str, version: str | None = None) -> Settings:
        """The mode's settings at this checkout's code version, or at the cached ``version`` (a prefix will do)."""
        if mode == "quick":
            quick = CACHE / "quick"
            subset = cifar_subset(quick / "cifar10-subset")
            folders = (quick, quick / "methods", RESULTS / "quick", f"npz:{subset}", QUICK_RECIPES, 3)
        elif mode == "full":
            full = CACHE / "full"
            folders = (full, full / "methods", RESULTS / "full", f"npz:{CIFAR}", FULL_RECIPES, 100)
        else:
            folders = (CACHE, CACHE / "methods", RESULTS, f"npz:{CIFAR}", CPU_RECIPES, 30)
        baselines, methods, results, data_ref, recipes, repeats = folders
        version = resolve_version(methods, version) if version else code_version()
        return cls(mode, baselines, methods / version[:VERSION_DIGITS], results, data_ref, recipes, repeats, version)

    def recipe(self, arch: str) -> Recipe:
        if arch not in self.recipes:
            raise SystemExit(f"no recipe for {arch!r}; the suite knows {', '.join(self.recipes)}")
        return self.recipes[arch]

    def to_dict(self, arch: str) -> dict[str, Any]:
        recipe = self.recipe(arch)
        return {
            "mode": self.mode,
            "data": self.data_ref,
            "recipe": asdict(recipe),
            "baseline_training": baseline_config(recipe).to_dict(),
            "finetune": finetune_config(recipe).to_dict(),
            "latency_repeats": self.latency_repeats,
            "latency_batches": list(LATENCY_BATCHES),
        }


def cifar_subset(directory: Path, train: int = 1024, test: int = 256) -> Path:
    """A small copy of the CIFAR-10 arrays for --quick (first rows; the train split is shuffled).

    1024 training images: the evolution search holds 512 out to score candidates.
    """
    if not (directory / "cifar10-test.npz").exists():  # written last: its presence means done
        directory.mkdir(parents=True, exist_ok=True)
        for split, n in (("train", train), ("test", test)):
            with np.load(CIFAR / f"cifar10-{split}.npz", allow_pickle=False) as npz:
                np.savez(directory / f"cifar10-{split}.npz", x=npz["x"][:n], y=npz["y"][:n])
    return directory

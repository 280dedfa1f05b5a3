"""Methods trained through peft itself (``train --method dora``, ``loha``, ...): one spec entry each, torch-free.

Each names the peft adapter_config it trains with at ``--rank`` r (default 8), on the same targets, head and
recipe as this toolkit's own methods; ``peft`` trains any peft config given with ``--peft-config``. Where a
method has a rank its budget is set comparable to LoRA's at r, as each ``budget`` says; everything else is
peft's default, so that no setting is tuned toward a finding. Each default learning rate is the one the atlas's
learning-rate sweep chose (``make atlas-lr-sweep``), as ``make lr-sweep`` chose this toolkit's.
"""

from __future__ import annotations

from .spec import MethodSpec, register_spec

_SWEPT = ("chosen by the atlas's learning-rate sweep (studies/atlas_lr_sweep.toml, figures/atlas/lr_sweep/results.json): "
          "the best mean validation accuracy over seeds 0 and 1, 3 epochs, of five or six rates")
_PEFT_EXPORT = ("peft",)

ATLAS_RATES = {"dora": 3e-3, "rslora": 3e-3, "pissa": 1e-3, "adalora": 3e-2, "loha": 1e-2, "lokr": 1e-2, "ia3": 1e-1, "oft": 3e-3,
               "boft": 1e-2, "hra": 1e-2, "fourierft": 1e-1, "vblora": 1e-2, "randlora": 3e-4}
"""Each peft method's default rate, as figures/atlas/lr_sweep/results.json chose it (a test keeps them equal)."""


def _peft_method(name: str, label: str, colour: str, peft: dict, budget: str, **kwargs) -> None:
    register_spec(MethodSpec(name, label, colour, ATLAS_RATES[name], _SWEPT, None, peft=peft, budget=budget, exports=_PEFT_EXPORT,
                             alpha_help=kwargs.pop("alpha_help", ""), **kwargs))


_LORA = {"peft_type": "LORA", "r": "{rank}", "lora_alpha": "{alpha}"}
_peft_method("dora", "DoRA", "#1F78B4", {**_LORA, "use_dora": True}, "LoRA's r and lora_alpha, plus a magnitude vector per layer (d_out)",
             alpha_help="lora_alpha (default r)")
_peft_method("rslora", "rsLoRA", "#0F4C81", {**_LORA, "use_rslora": True}, "LoRA's r and lora_alpha, scaled by lora_alpha / √r",
             alpha_help="lora_alpha (default r)")
_peft_method("pissa", "PiSSA", "#33A02C", {**_LORA, "init_lora_weights": "pissa"},
             "LoRA's r, initialised from W0's top-r singular directions (exact SVD), W0 holding the residual", alpha_help="lora_alpha (default r)")
_peft_method("adalora", "AdaLoRA", "#FF7F00", {"peft_type": "ADALORA", "target_r": "{rank}", "init_r": 12, "lora_alpha": "{alpha}",
                                               "total_step": "{total_steps}"},
             "a budget of r (target_r) per layer on average at the end, from peft's init_r = 12, its rank allocated during training")
_peft_method("loha", "LoHa", "#E7298A", {"peft_type": "LOHA", "r": "{half_rank}", "alpha": "{half_alpha}"},
             "r / 2: two pairs of factors, so as many trained numbers as LoRA at r (ΔW's rank up to r² / 4)")
_peft_method("lokr", "LoKr", "#BCBD22", {"peft_type": "LOKR", "r": "{rank}", "alpha": "{alpha}"},
             "r for the decomposed Kronecker factor, peft's default factorization")
_peft_method("ia3", "IA³", "#B15928", {"peft_type": "IA3", "feedforward_modules": []},
             "no rank: one learned scale per output feature of each target")
_peft_method("oft", "OFT", "#6A3D9A", {"peft_type": "OFT", "r": 0, "oft_block_size": 32},
             "no rank: peft's default block size, 32 (12 orthogonal blocks of a 384-wide layer)")
_peft_method("boft", "BOFT", "#CAB2D6", {"peft_type": "BOFT", "boft_block_size": 4},
             "no rank: peft's default butterfly block size, 4, one butterfly factor")
_peft_method("hra", "HRA", "#FB9A99", {"peft_type": "HRA", "r": "{rank}"}, "r Householder reflections (peft's default is 8)")
_peft_method("fourierft", "FourierFT", "#A6CEE3", {"peft_type": "FOURIERFT", "n_frequency": 1000},
             "no rank: peft's default 1,000 trained spectral coefficients per layer")
_peft_method("vblora", "VB-LoRA", "#B2DF8A", {"peft_type": "VBLORA", "r": "{rank}", "vector_length": 128},
             "r, peft's bank of 256 vectors, of length 128 (peft's 256 does not divide a 384-wide layer)")
_peft_method("randlora", "RandLoRA", "#FDBF6F", {"peft_type": "RANDLORA"},
             "peft's defaults (r = 32 per basis, full rank): about as many trained numbers per layer as LoRA at r = 8")
register_spec(MethodSpec("peft", "a peft config", "#8C564B", 3e-3, "LoRA's swept rate: a config brought by the user has no sweep",
                         None, peft={}, budget="whatever --peft-config says", exports=_PEFT_EXPORT))

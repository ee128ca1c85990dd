"""autodiff: add `@grad` (loss and gradients) and, with an optimizer, `@train_step` to a module.

The transformation is ir/autodiff.py (the backward graph is built from the ops' gradient rules in
the op-family files); this pass parses the options, runs it on `@main` and shape-infers the result,
so `mlc build` compiles training the way it compiles inference. `@main` stays as it was.

Requires: nothing (shape-infer runs first when types are missing). Establishes: "shapes-inferred".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mlc.ir.autodiff import OPTIMIZERS, Loss, Optimizer, Provenance, Spec, grad_function, train_step_function
from mlc.ir.diagnostics import MlcError
from mlc.ir.graph import Function
from mlc.ir.module import Module

from .registry import ModulePass, PassContext, option, register_pass
from .shape_infer import ShapeInfer


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


@register_pass
@dataclass(frozen=True)
class Autodiff(ModulePass):
    """Reverse-mode differentiation: @grad returns `loss` and `grad_<name>` per differentiated
    constant or input (a VJP taking `d_<result>` when there is no loss); an optimizer adds
    @train_step (weights and optimizer state in, loss and their updates out)."""

    name: ClassVar[str] = "autodiff"
    needs_constants: ClassVar[bool] = True  # the shapes of the initializers folded constants came from

    wrt: str = option("all", "Constants to differentiate: 'all' (the model's float initializers of rank >= 1, "
                             "folded ones traced back to them) or NAME,...; 'none' for inputs only.")
    wrt_inputs: str = option("", "Inputs to differentiate too: NAME,...")
    loss: str = option("", "sum | mean | mse:TARGET | cross-entropy:LABELS (a new input); empty: a VJP.")
    optimizer: str = option("", "Add @train_step with this update: sgd | momentum | adam.",
                            ("", *OPTIMIZERS))
    lr: float = option(0.01, "Learning rate of @train_step.")
    beta1: float = option(0.9, "Momentum coefficient (momentum) or first-moment decay (adam).")
    beta2: float = option(0.999, "Second-moment decay (adam).")
    eps: float = option(1e-8, "Adam's epsilon.")
    weight_decay: float = option(0.0, "L2 weight decay added to the gradient.")
    loss_scale: bool = option(False, "Dynamic loss scaling in @train_step (f16 training): inputs loss_scale, "
                                     "good_steps; a step with inf/nan gradients is skipped and halves the scale.")
    scale_window: int = option(1000, "Good steps in a row after which the loss scale doubles.")
    func: str = option("main", "The graph function to differentiate.")

    def apply(self, module: Module, ctx: PassContext) -> Module:
        names = {f.name for f in module.functions}
        if self.func not in names or not isinstance(module.get(self.func), Function):
            raise MlcError(f"autodiff: no graph function @{self.func}")
        for new in ("grad", "train_step"):
            if new in names:
                raise MlcError(f"autodiff: the module already has a function @{new}")
        module = ShapeInfer().apply(module, ctx)
        fn = module.get(self.func)
        assert isinstance(fn, Function)
        wrt = None if self.wrt == "all" else () if self.wrt == "none" else _names(self.wrt)
        spec = Spec(wrt, _names(self.wrt_inputs), Loss.parse(self.loss) if self.loss else None)
        prov = Provenance.of(module.meta, ctx.constants)
        out = module.with_function(grad_function(fn, spec, prov=prov))
        if self.optimizer:
            if self.scale_window <= 0:
                raise MlcError("autodiff: --scale-window must be positive")
            opt = Optimizer(self.optimizer, self.lr, self.beta1, self.beta2, self.eps, self.weight_decay,
                            self.loss_scale, self.scale_window)
            out = out.with_function(train_step_function(fn, spec, opt, prov=prov))
        return ShapeInfer().apply(out, ctx)

"""Recurrent layers (``LSTM``, ``GRU``, ``RNN`` and their cells) are not quantized: they stay float and are reported.

Why not their weights alone: a recipe is a set of slots applied per layer (weight, input, bias, output gradient), and
none of them means the same thing in a recurrence:

* **weight**: an ``nn.LSTM`` holds ``2 · layers · directions`` weight matrices (``weight_ih_l0``, ``weight_hh_l0``,
  ...) that its fused kernel (``_VF.lstm``) reads as one flat list; a slot holds one quantizer for one ``weight``.
* **input**: the activations that meet the recurrent weights are the hidden states ``h_{t-1}`` *inside* the fused
  kernel, at every time step; quantizing only the sequence given to the layer would leave most of them float while the
  recipe says "every quantized layer's input".
* **grad**: Banner's gradient bifurcation rounds the gradient propagated to the layer below; inside a recurrence that
  is the gradient through time, which the fused backward computes without a hook.

Quantizing such a layer only partly and calling it "quantized" would be the silent float this library avoids; so
these types are named here with the reason, which the conversion report gives for them (``unsupported_reason``). To
quantize a recurrent model's weights, write the cell with ``nn.Linear`` gates (which are quantized with every slot).
"""

from __future__ import annotations

from typing import Optional

from torch import nn

__all__ = ["UNSUPPORTED_LAYERS", "unsupported_reason"]

_RECURRENT = (
    "recurrent layers are not quantized by lowbit: their weights are several tensors read by a fused kernel, and the "
    "input and gradient slots would act inside the recurrence (see lowbit.nn.recurrent); the layer stays float"
)

#: layer types lowbit refuses to quantize -> why (shown by the conversion report and the model summary)
UNSUPPORTED_LAYERS: dict[type, str] = {
    kind: _RECURRENT for kind in (nn.LSTM, nn.GRU, nn.RNN, nn.LSTMCell, nn.GRUCell, nn.RNNCell)
}


def unsupported_reason(module: nn.Module) -> Optional[str]:
    """Why ``module`` is left float (``"nn.LSTM: recurrent layers are ..."``), or ``None`` for other modules."""
    for kind, reason in UNSUPPORTED_LAYERS.items():
        if isinstance(module, kind):
            return f"nn.{kind.__name__}: {reason}"
    return None

"""The quantizer slots of a quantized layer: the one list of their names, attributes and quantizer roles.

A recipe names slots (``quantize.weight``, ``quantize.input``...), a quantized layer holds each slot's quantizer in
an attribute, and the quantizer is built for a role (which sets role-dependent defaults such as signedness):

======  ==================  ==========  ==============================================
slot    attribute           role        what it quantizes
======  ==================  ==========  ==============================================
weight  ``weight_quantizer``  weight      the layer's weights
input   ``input_quantizer``   activation  the layer's input (activations)
bias    ``bias_quantizer``    bias        the layer's bias
grad    ``grad_quantizer``    gradient    the gradient w.r.t. the layer's output (Banner)
======  ==================  ==========  ==============================================
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Slot", "SLOTS"]


@dataclass(frozen=True)
class Slot:
    name: str  # the recipe key
    attribute: str  # the layer attribute holding the quantizer
    role: str  # the quantizer role it is built for
    description: str


#: slot name -> slot, in recipe order
SLOTS: dict[str, Slot] = {
    slot.name: slot
    for slot in (
        Slot("weight", "weight_quantizer", "weight", "weights"),
        Slot("input", "input_quantizer", "activation", "layer inputs (activations)"),
        Slot("bias", "bias_quantizer", "bias", "biases"),
        Slot("grad", "grad_quantizer", "gradient", "gradient w.r.t. the layer output (Banner)"),
    )
}

"""Models lowbit never saw, built with the block structure of the libraries users take them from.

torchvision's compiled extension does not load beside this CPU build of torch, and nothing is downloaded, so the
architectures are written out here at small widths: the same module types, in-place activations, depthwise and
grouped convolutions, squeeze-excitation, attention, HuggingFace GPT-2's ``Conv1D``, tied weights and modules used
twice. Each builder returns ``(model, example_input)``; the example is a small batch of the model's input type.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ZOO", "build", "HFConv1D", "MyLinear"]


# ------------------------------------------------------------------------------------------ torchvision ResNet
class BasicBlock(nn.Module):
    """torchvision's ``BasicBlock``: conv-BN-ReLU(inplace)-conv-BN, identity or 1×1-conv downsample, ReLU."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class ResNet18(nn.Module):
    """torchvision's ResNet-18 layout (stem, maxpool, 4 stages of 2 blocks, avgpool, fc) at width ``w``."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, w: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, w, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths = [w, 2 * w, 4 * w, 8 * w]
        layers, inplanes = [], w
        for i, planes in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(BasicBlock(inplanes, planes, stride), BasicBlock(planes, planes)))
            inplanes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# --------------------------------------------------------------------------------------- torchvision MobileNetV2
def conv_bn_act(
    cin: int,
    cout: int,
    k: int,
    stride: int = 1,
    groups: int = 1,
    act: Callable[[], nn.Module] = lambda: nn.ReLU6(inplace=True),
) -> nn.Sequential:
    """torchvision's ``Conv2dNormActivation``: conv (no bias), BatchNorm, in-place activation."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), act()
    )


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1×1 expand, 3×3 depthwise, 1×1 linear projection; residual when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers = [conv_bn_act(cin, hidden, 1)] if expand != 1 else []
        layers += [
            conv_bn_act(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision's MobileNetV2 layout at small width: ``features`` (stem, inverted residuals, 1×1 head conv),
    ``classifier`` (Dropout, Linear)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, w: int = 8) -> None:
        super().__init__()
        # (expand, channels, repeats, stride) of torchvision's table, scaled down
        settings = [(1, w, 1, 1), (6, w + w // 2, 2, 2), (6, 2 * w, 2, 2), (6, 4 * w, 1, 2)]
        layers: list[nn.Module] = [conv_bn_act(in_channels, w, 3, 1)]
        cin = w
        for t, c, n, s in settings:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(conv_bn_act(cin, 8 * w, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(8 * w, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


# ---------------------------------------------------------------------------------------- torchvision EfficientNet
class SqueezeExcitation(nn.Module):
    """torchvision's SE block: avgpool, 1×1 conv, SiLU, 1×1 conv, sigmoid, channel-wise scale."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = nn.SiLU(inplace=True)
        self.scale_activation = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return scale * x


class MBConv(nn.Module):
    """EfficientNet's MBConv: 1×1 expand (SiLU), depthwise k×k (SiLU), SE, 1×1 project; residual when it fits."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        silu = lambda: nn.SiLU(inplace=True)  # noqa: E731
        layers = [conv_bn_act(cin, hidden, 1, act=silu)] if expand != 1 else []
        layers += [
            conv_bn_act(hidden, hidden, k, stride, groups=hidden, act=silu),
            SqueezeExcitation(hidden, max(1, cin // 4)),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.block = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_res_connect else self.block(x)


class EfficientNetB0(nn.Module):
    """torchvision's EfficientNet-B0 layout (stem, MBConv stages with SE and SiLU, 1×1 head, avgpool, classifier)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, w: int = 8) -> None:
        super().__init__()
        silu = lambda: nn.SiLU(inplace=True)  # noqa: E731
        stages = [(1, w, 3, 1, 1), (6, w + w // 2, 3, 2, 2), (6, 2 * w, 5, 2, 1), (6, 4 * w, 3, 2, 1)]
        layers: list[nn.Module] = [conv_bn_act(in_channels, w, 3, 1, act=silu)]
        cin = w
        for t, c, k, s, n in stages:
            for i in range(n):
                layers.append(MBConv(cin, c, k, s if i == 0 else 1, t))
                cin = c
        layers.append(conv_bn_act(cin, 8 * w, 1, act=silu))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2, inplace=True), nn.Linear(8 * w, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# -------------------------------------------------------------------------------------------------- Transformer
class TransformerClassifier(nn.Module):
    """Token classifier on ``nn.TransformerEncoder`` (whose eval fast path under ``no_grad`` reads the layers'
    weights directly): Embedding, positional Embedding, 2 encoder layers, mean pooling, Linear head."""

    def __init__(
        self, vocab: int = 50, d_model: int = 32, heads: int = 4, length: int = 12, num_classes: int = 4
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.position = nn.Embedding(length, d_model)
        layer = nn.TransformerEncoderLayer(d_model, heads, dim_feedforward=2 * d_model, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.encoder(self.embed(tokens) + self.position(positions))
        return self.head(x.mean(dim=1))


# ------------------------------------------------------------------------------------------------- GPT-2 (HF)
class HFConv1D(nn.Module):
    """HuggingFace's GPT-2 ``Conv1D``: a Linear with the weight stored transposed, ``(nx, nf)``, computed with
    ``addmm``; not an ``nn.Linear``."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.empty(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size_out = x.size()[:-1] + (self.nf,)
        x = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
        return x.view(size_out)


class GPT2Block(nn.Module):
    """GPT-2's block: ln_1, causal attention (``c_attn`` → q, k, v; ``c_proj``), ln_2, MLP (``c_fc``, GELU,
    ``c_proj``), all projections ``HFConv1D``."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(d)
        self.c_attn = HFConv1D(3 * d, d)
        self.attn_proj = HFConv1D(d, d)
        self.ln_2 = nn.LayerNorm(d)
        self.c_fc = HFConv1D(4 * d, d)
        self.mlp_proj = HFConv1D(d, 4 * d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.heads)
        att = att.masked_fill(torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1), float("-inf"))
        y = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.attn_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class GPT2(nn.Module):
    """GPT-2's layout: token and position Embeddings, blocks, final LayerNorm, LM head tied to the token
    embedding (one tensor under two names)."""

    def __init__(self, vocab: int = 64, d: int = 32, heads: int = 4, layers: int = 2, length: int = 16) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(length, d)
        self.h = nn.ModuleList(GPT2Block(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.wte(tokens) + self.wpe(positions)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))[:, -1]  # next-token logits of the last position


# ------------------------------------------------------------------------------------ sequences and oddities
class Conv1dNet(nn.Module):
    """Sequence classifier: Conv1d (grouped and depthwise too) with BatchNorm1d and in-place ReLU."""

    def __init__(self, channels: int = 4, num_classes: int = 5) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv1d(channels, 16, 5, padding=2),
            nn.BatchNorm1d(16),
            nn.ReLU(inplace=True),
            nn.Conv1d(16, 16, 3, padding=1, groups=16),
            nn.BatchNorm1d(16),
            nn.ReLU(inplace=True),
            nn.Conv1d(16, 32, 3, padding=1, groups=4),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool1d(1),
        )
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).flatten(1))


class Conv3dNet(nn.Module):
    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm3d(8)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool3d(torch.relu(self.bn(self.conv(x))), 1).flatten(1))


class Autoencoder(nn.Module):
    """ConvTranspose1d/2d decoders (outputs the reconstruction's mean per sample as 'logits' of 2 classes)."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Conv2d(1, 8, 3, stride=2, padding=1)
        self.dec = nn.ConvTranspose2d(8, 1, 4, stride=2, padding=1)
        self.dec1d = nn.ConvTranspose1d(1, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dec(torch.relu(self.enc(x)))  # N×1×H×W
        return self.dec1d(y.flatten(2)).mean(-1)  # N×2


class RecurrentClassifier(nn.Module):
    """Embedding, then an LSTM or GRU, then Linear on the last hidden state."""

    def __init__(self, cell: str = "lstm", vocab: int = 30, d: int = 16, num_classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.rnn = (nn.LSTM if cell == "lstm" else nn.GRU)(d, d, batch_first=True)
        self.fc = nn.Linear(d, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embed(tokens))
        return self.fc(out[:, -1])


class MyLinear(nn.Linear):
    """A user's subclass of ``nn.Linear``."""


class Oddities(nn.Module):
    """A subclass of Linear, a functional call on a raw parameter, a module used twice and a module registered under
    two names."""

    def __init__(self) -> None:
        super().__init__()
        self.first = MyLinear(8, 16)
        self.raw = nn.Parameter(torch.randn(16, 16) * 0.1)  # used through F.linear
        self.shared = nn.Linear(16, 16)
        self.alias = self.shared  # the same module under a second name
        self.out = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.first(x))
        x = torch.relu(F.linear(x, self.raw))
        x = torch.relu(self.shared(x))
        x = torch.relu(self.alias(x))  # called twice
        return self.out(x)


# --------------------------------------------------------------------------------------------------- registry
def _images(channels: int, size: int) -> Callable[[int], torch.Tensor]:
    return lambda n: torch.randn(n, channels, size, size)


def _tokens(vocab: int, length: int) -> Callable[[int], torch.Tensor]:
    return lambda n: torch.randint(0, vocab, (n, length))


#: name -> (builder, example maker, number of classes)
ZOO: dict[str, tuple[Callable[[], nn.Module], Callable[[int], torch.Tensor], int]] = {
    "resnet18": (lambda: ResNet18(3, 10), _images(3, 32), 10),
    "mobilenet_v2": (lambda: MobileNetV2(3, 10), _images(3, 32), 10),
    "mobilenet_v2_28": (lambda: MobileNetV2(1, 10), _images(1, 28), 10),
    "efficientnet_b0": (lambda: EfficientNetB0(3, 10), _images(3, 32), 10),
    "transformer": (lambda: TransformerClassifier(), _tokens(50, 12), 4),
    "gpt2": (lambda: GPT2(), _tokens(64, 16), 64),
    "conv1d": (lambda: Conv1dNet(), lambda n: torch.randn(n, 4, 32), 5),
    "conv3d": (lambda: Conv3dNet(), lambda n: torch.randn(n, 1, 6, 6, 6), 3),
    "autoencoder": (lambda: Autoencoder(), _images(1, 8), 2),
    "lstm": (lambda: RecurrentClassifier("lstm"), _tokens(30, 10), 3),
    "gru": (lambda: RecurrentClassifier("gru"), _tokens(30, 10), 3),
    "oddities": (lambda: Oddities(), lambda n: torch.randn(n, 8), 3),
}


def build(name: str, batch: int = 4, seed: Optional[int] = 0) -> tuple[nn.Module, torch.Tensor]:
    """``(model, example batch)`` of a zoo entry, seeded."""
    if seed is not None:
        torch.manual_seed(seed)
    builder, example, _ = ZOO[name]
    return builder(), example(batch)

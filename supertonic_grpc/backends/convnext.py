"""The ConvNeXt stacks for inference: channels-last, their MLPs prepacked, in a chosen precision.

The ConvNeXt blocks hold about 85% of the model's arithmetic (the vector estimator's 28 blocks
per flow step and the vocoder's 10). Written as in the paper, each runs a depthwise convolution
on `[B, C, T]`, then transposes for LayerNorm and the pointwise MLP, and back. On x86 CPUs that
is slow three ways: oneDNN's depthwise convolution on the channels-first layout is several
times slower than on channels-last (where its output is already the `[B, T, C]` the LayerNorm
and MLP want); the MLP's matrix products re-pack their weights on every call; and each block
pays for transposed copies and for masks that multiply by one.

`install` gives every block, every stack of blocks and the vocoder's decoder a prepared
forward: the same arithmetic on `[B, T, C]` from the stack's entry to its exit (one transpose
in, a free view out), the depthwise convolution on oneDNN's channels-last path, the MLP's
weights packed once with GELU fused into the first product and the layer scale folded into
the second, the input mask applied once per stack (a block's output is already masked) and
once per block (at its output), and no mask at all when it is all ones (a batch of one, or
of equal lengths). In float32 the result differs from the paper form only by rounding (about 1e-7).

Nothing in `supertonic_grpc.model` changes: `restore` puts the paper-form forwards back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from supertonic_grpc.backends import forwards, onednn
from supertonic_grpc.backends.precision import FP32, PointwiseMLP, Precision
from supertonic_grpc.model.layers import ConvNeXtBlock, ConvNeXtStack
from supertonic_grpc.model.vocoder import Decoder

log = logging.getLogger(__name__)


def frame_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """`[B, 1, T]` -> `[B, T, 1]`, or None when there is no mask or it is all ones (then every
    multiplication by it is the identity, and skipping it is exact)."""
    if mask is None or bool(mask.min() == 1):
        return None
    return mask.transpose(1, 2)


def enter_channels_last(
    x: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`x [B, C, T]`, `mask [B, 1, T]` -> `x [B, T, C]` contiguous and zero where masked, and
    its `frame_mask` (a free transpose when `x` is a view of a channels-last tensor)."""
    mask_t = frame_mask(mask)
    h = x.transpose(1, 2).contiguous()
    return (h, None) if mask_t is None else (h * mask_t, mask_t)


class ChannelsLastConv:
    """A Conv1d on `[B, T, C_in]` -> `[B, T, C_out]`, edge values repeated `left`/`right` times.

    The input is viewed as a channels-last `[B, C, 1, T]` image (no copy), which puts oneDNN on
    its fast path; the output comes back already `[B, T, C]`. A symmetric depthwise convolution
    pads with zeros inside oneDNN and then adds what the repeated edge values would have
    contributed (a few rows, from weight sums computed once) instead of copying the whole
    input into a padded one.
    """

    def __init__(self, conv: nn.Conv1d, left: int, right: int) -> None:
        self.left, self.right = left, right
        # [C_out, C_in / groups, 1, K] channels-last: a 1-high 2D convolution over time.
        self.weight = conv.weight.detach()[:, :, None, :].contiguous(
            memory_format=torch.channels_last
        )
        self.bias = None if conv.bias is None else conv.bias.detach().clone()
        self.dilation = (1, conv.dilation[0])
        self.groups = conv.groups
        self.edges: tuple[torch.Tensor, torch.Tensor] | None = None
        depthwise = conv.groups == conv.in_channels == conv.out_channels
        # Only undilated: oneDNN's zero-padded path is slower than the copy when dilated.
        if depthwise and left == right > 0 and conv.dilation[0] == 1:
            w = conv.weight.detach()[:, 0, :]  # [C, K]
            taps = torch.arange(w.shape[1]) * conv.dilation[0]
            rows = torch.arange(left)
            # Output i reads x[i + tap - left]; below 0 that is x[0], at or past T it is x[-1].
            before = (taps[None, :] < (left - rows)[:, None]).to(w.dtype)  # [left, K]
            after = (taps[None, :] >= (left + rows + 1)[:, None]).to(w.dtype)  # [r from end, K]
            # [left, C]: the weight on x[0] of output i; on x[-1] of output T-1-r (reversed).
            self.edges = (before @ w.T, (after @ w.T).flip(0))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.edges is not None:
            return self._zero_padded(x)
        if self.left and not self.right:
            return self.stream(x, None)[0]
        parts = [x]
        if self.left:
            parts.insert(0, x[:, :1].expand(-1, self.left, -1))
        if self.right:
            parts.append(x[:, -1:].expand(-1, self.right, -1))
        xp = torch.cat(parts, dim=1) if len(parts) > 1 else x.contiguous()
        y = F.conv2d(
            xp.transpose(1, 2).unsqueeze(2), self.weight, self.bias,
            dilation=self.dilation, groups=self.groups,
        )  # fmt: skip
        return y.squeeze(2).transpose(1, 2)  # [B, T, C_out], contiguous

    def stream(
        self, x: torch.Tensor, tail: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A causal convolution over the next frames `x [B, T, C_in]` of a sequence whose
        earlier input ended in `tail [B, left, C_in]` (None at its start: the first frame
        repeated, as the edge padding does). Returns `[B, T, C_out]` and the new tail: the
        output equals these frames of the whole sequence convolved at once."""
        if self.right:
            raise ValueError("stream: only a causal convolution (no right padding) streams")
        if tail is None:
            tail = x[:, :1].expand(-1, self.left, -1)
        xp = torch.cat([tail, x], dim=1)
        y = F.conv2d(
            xp.transpose(1, 2).unsqueeze(2), self.weight, self.bias,
            dilation=self.dilation, groups=self.groups,
        )  # fmt: skip
        # A copy, so the tail does not keep the whole padded input alive between pieces.
        return y.squeeze(2).transpose(1, 2), xp[:, -self.left :].clone()

    def _zero_padded(self, x: torch.Tensor) -> torch.Tensor:
        assert self.edges is not None
        first, last = self.edges
        p, t = self.left, x.shape[1]
        y = F.conv2d(
            x.contiguous().transpose(1, 2).unsqueeze(2), self.weight, self.bias,
            padding=(0, p), dilation=self.dilation, groups=self.groups,
        )  # fmt: skip
        y = y.squeeze(2).transpose(1, 2)
        m = min(p, t)
        y[:, :m].addcmul_(x[:, :1], first[:m])
        y[:, t - m :].addcmul_(x[:, -1:], last[p - m :])
        return y


def _detached(t: torch.Tensor | None, what: str) -> torch.Tensor:
    if t is None:  # the model's layers always have them
        raise ValueError(f"a layer without its {what}")
    return t.detach()


class ChannelsLastConvNeXt:
    """One ConvNeXt block's forward, channels-last.

    A plain object, not a module: it holds derived, packed copies of the block's weights, so
    the block's state dict (and anything that saves or loads it) is untouched. Called as the
    block is (`x [B, C, T], mask [B, 1, T] | None`); stacks call `forward_tc` directly.
    """

    def __init__(self, block: ConvNeXtBlock, precision: Precision = FP32) -> None:
        conv: nn.Conv1d = block.dwconv.net if block.causal else block.dwconv  # type: ignore[assignment]
        pad = (conv.kernel_size[0] - 1) * conv.dilation[0]
        with torch.no_grad():
            self.dwconv = ChannelsLastConv(conv, *((pad, 0) if block.causal else (block.pad,) * 2))
            norm = block.norm.norm
            self.norm_shape = norm.normalized_shape
            self.norm_weight = _detached(norm.weight, "LayerNorm weight")
            self.norm_bias = _detached(norm.bias, "LayerNorm bias")
            self.norm_eps = norm.eps
            # residual + gamma * (W2 h + b2) == residual + (gamma W2) h + gamma b2.
            gamma = block.gamma.detach().reshape(-1)
            self.mlp = PointwiseMLP(
                block.pwconv1.weight.detach().squeeze(-1),
                _detached(block.pwconv1.bias, "first pointwise bias"),
                block.pwconv2.weight.detach().squeeze(-1) * gamma[:, None],
                _detached(block.pwconv2.bias, "second pointwise bias") * gamma,
                precision,
            )

    def forward_tc(self, x: torch.Tensor, mask_t: torch.Tensor | None) -> torch.Tensor:
        """x: `[B, T, C]` contiguous, already zero where `mask_t [B, T, 1]` is -> `[B, T, C]`.

        The paper form masks its input first, the convolution's output, and its output
        last. With the input masked already, `(x + f) * m` is the block's output for every
        position; and since everything between the convolution and that last mask works
        position by position, masking the convolution's output changes only values the last
        mask zeroes, so it is skipped.
        """
        y = self.dwconv(x)
        y = F.layer_norm(y, self.norm_shape, self.norm_weight, self.norm_bias, self.norm_eps)
        y = self.mlp(y, residual=x)
        return y if mask_t is None else y.mul_(mask_t)

    def stream_tc(
        self, x: torch.Tensor, tail: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A causal block over the next frames `x [B, T, C]` (see `ChannelsLastConv.stream`):
        `[B, T, C]` and the convolution's new tail."""
        y, tail = self.dwconv.stream(x, tail)
        y = F.layer_norm(y, self.norm_shape, self.norm_weight, self.norm_bias, self.norm_eps)
        return self.mlp(y, residual=x), tail

    def __call__(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_tc(*enter_channels_last(x, mask)).transpose(1, 2)


class ChannelsLastStack:
    """A ConvNeXt stack's forward: `x [B, C, T], mask [B, 1, T]` -> `[B, C, T]` (a view of a
    channels-last tensor: the next layer's transpose to `[B, T, C]` is then free)."""

    def __init__(self, blocks: list[ChannelsLastConvNeXt]) -> None:
        self.blocks = blocks

    def __call__(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h, mask_t = enter_channels_last(x, mask)
        for block in self.blocks:
            h = block.forward_tc(h, mask_t)
        return h.transpose(1, 2)


class ChannelsLastDecoder:
    """The vocoder's decoder, channels-last from the embedding to the head's last product:
    `z [B, 24, F]` -> waveform `[B, F * hop]`. The head's 1x1 convolution to `hop` samples
    per frame is then a matrix product whose `[B, F, hop]` output is the waveform as is."""

    def __init__(self, decoder: Decoder, blocks: list[ChannelsLastConvNeXt]) -> None:
        self.blocks = blocks
        with torch.no_grad():
            self.embed = ChannelsLastConv(decoder.embed.net, decoder.embed.pad, 0)
            bn = decoder.final_norm.norm
            # Eval-mode BatchNorm is a per-channel affine map.
            mean = _detached(bn.running_mean, "BatchNorm running mean")
            var = _detached(bn.running_var, "BatchNorm running variance")
            scale = _detached(bn.weight, "BatchNorm weight") / torch.sqrt(var + bn.eps)
            self.bn_scale = scale
            self.bn_shift = _detached(bn.bias, "BatchNorm bias") - mean * scale
            head = decoder.head
            self.head1 = ChannelsLastConv(head.layer1.net, head.layer1.pad, 0)
            self.prelu = head.act.weight.detach().clone()
            self.head2 = head.layer2.weight.detach().squeeze(-1).contiguous()
            if self.head2.device.type == "cpu":
                self.head2 = onednn.pack(self.head2)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return self.stream(z, None)[0]

    def stream(
        self, z: torch.Tensor, state: DecoderState | None
    ) -> tuple[torch.Tensor, DecoderState]:
        """Decode the next frames `z [B, 24, F]` of a sequence, carrying `state` from the
        frames before (None at its start): `[B, F * hop]` and the state after them. The
        decoder is causal, so pieces decoded in turn equal the whole decoded at once, and no
        frame is decoded twice (the alternative, re-decoding each piece's receptive field
        of left context, costs 20 latent frames a piece)."""
        tails = state.tails if state is not None else [None] * (len(self.blocks) + 2)
        h, embed_tail = self.embed.stream(z.transpose(1, 2), tails[0])
        new = [embed_tail]
        for block, tail in zip(self.blocks, tails[1:-1], strict=True):
            h, tail = block.stream_tc(h, tail)
            new.append(tail)
        h = torch.addcmul(self.bn_shift, h, self.bn_scale)
        h, head_tail = self.head1.stream(h, tails[-1])
        new.append(head_tail)
        h = F.prelu(h, self.prelu)
        if self.head2.device.type == "cpu":
            out = onednn.linear(h, self.head2, None)
        else:
            out = F.linear(h, self.head2)
        return out.flatten(1), DecoderState(new)


@dataclass(frozen=True, eq=False)
class DecoderState:
    """What a streamed decode carries between pieces: each causal convolution's last input
    frames (its receptive field), in call order."""

    tails: list[torch.Tensor]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tails)


def streaming_decoder(decoder: Decoder) -> ChannelsLastDecoder | None:
    """The prepared forward of `decoder`, which can decode in pieces (`stream`), or None
    when the decoder runs its paper form."""
    forward = forwards.installed(decoder)
    return forward if isinstance(forward, ChannelsLastDecoder) else None


def install(model: nn.Module, precision: Precision = FP32) -> int:
    """Give every ConvNeXt block, stack and decoder of `model` its channels-last forward;
    returns how many blocks. Idempotent; call it after the weights are loaded and the model
    is on its device."""
    restore(model)
    fast: dict[ConvNeXtBlock, ChannelsLastConvNeXt] = {}
    for module in model.modules():
        if isinstance(module, ConvNeXtBlock):
            fast[module] = ChannelsLastConvNeXt(module, precision)
    # An instance attribute shadows the class's forward; nn.Module.__call__ uses it.
    for module in model.modules():
        if isinstance(module, ConvNeXtBlock):
            object.__setattr__(module, "forward", fast[module])
        elif isinstance(module, ConvNeXtStack):
            stack = ChannelsLastStack([fast[b] for b in module.convnext])  # type: ignore[index]
            object.__setattr__(module, "forward", stack)
        elif isinstance(module, Decoder):
            blocks = [fast[b] for b in module.convnext]  # type: ignore[index]
            object.__setattr__(module, "forward", ChannelsLastDecoder(module, blocks))
    log.info("backend: %d ConvNeXt blocks channels-last, MLPs in %s", len(fast), precision)
    return len(fast)


_PREPARED = (ConvNeXtBlock, ConvNeXtStack, Decoder)


def restore(model: nn.Module) -> None:
    """Undo `install`: every block, stack and decoder runs its paper-form forward again."""
    forwards.restore(model, _PREPARED)


def is_prepared(model: nn.Module) -> bool:
    return any(
        isinstance(m, _PREPARED) and forwards.installed(m) is not None for m in model.modules()
    )

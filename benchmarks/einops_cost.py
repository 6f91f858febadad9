"""Does einops cost anything? coatlib's attention splits heads with ``einops.rearrange``; this times
CoAtNet-0's S3 relative attention as written against the same module with the head split and merge
done by ``view`` / ``permute`` / ``reshape`` by hand.

    python benchmarks/einops_cost.py [--batch 8] [--rounds 30]

Prints the median over rounds of the paired times (``paired_speedup``): 1.00 means no cost.
"""

from __future__ import annotations

import argparse

import torch
from throughput import paired_speedup, timed_rounds

from coatlib.attention import RelativeAttention


class ByHand(RelativeAttention):
    """The same attention, heads split and merged without einops."""

    def qkv_heads(self, x):
        B, N, _ = x.shape
        return self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)

    def merge_heads(self, out):
        return self.proj(out.transpose(1, 2).flatten(2))

    def tokens(self, x):
        return x.flatten(2).transpose(1, 2)

    def forward(self, x):
        B, _, H, W = x.shape
        q, k, v = self.qkv_heads(self.tokens(x))
        out = self.merge_heads(self.attend(q, k, v, self.relative_bias()))
        return out.transpose(1, 2).reshape(B, -1, H, W)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    torch.manual_seed(0)
    einops_attn = RelativeAttention(384, 384, head_dim=32, map_size=14).eval()
    by_hand = ByHand(384, 384, head_dim=32, map_size=14).eval()
    by_hand.load_state_dict(einops_attn.state_dict())
    x = torch.randn(args.batch, 384, 14, 14).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.equal(einops_attn(x), by_hand(x))

        def run(module):
            return lambda: module(x)

        times = timed_rounds([run(einops_attn), run(by_hand)], args.rounds, warmup=3)
    print(f"CoAtNet-0 S3 attention, batch {args.batch}, 14x14 map, 12 heads, {torch.get_num_threads()} threads")
    print(f"einops / by hand, paired median over {args.rounds} rounds: {paired_speedup(times, 0, 1):.3f}x the speed")


if __name__ == "__main__":
    main()

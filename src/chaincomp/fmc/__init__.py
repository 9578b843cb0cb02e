"""Feature-map compression (ASC, Yao & Chang, TCAS-I 2024): a block codec with a real bitstream.

`encode`/`decode` turn an (N, C, H, W) map into bytes and back (`preset="paper"`: the paper's
4.00x operating point); `attach_codec` puts the codec on chosen layer outputs of any nn.Module so
the task metric sees the decoded maps.
"""
from .baselines import encode_minmax, encode_single_mode
from .codec import (DEFAULT_BLOCK, DEFAULT_INDEX_BITS, DEFAULT_SCALES, PAPER, PRESETS, Preset, cbr_bytes, decode,
                    encode, encode_with_stats, resolve)
from .hooks import CodecHandle, attach_codec, default_points

__all__ = ["encode", "decode", "encode_with_stats", "cbr_bytes", "encode_minmax", "encode_single_mode",
           "attach_codec", "default_points", "CodecHandle", "DEFAULT_BLOCK", "DEFAULT_INDEX_BITS",
           "DEFAULT_SCALES", "PAPER", "PRESETS", "Preset", "resolve"]

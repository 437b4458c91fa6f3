"""Model configuration: one JSON-serialisable dataclass; presets tiny (unit tests), small (learns on a
CPU) and the Wan2.2-TI2V-5B sizes."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from mvvdp_core.geometry.workspace import Workspace
from mvvdp_core.model.view_attention import VIEW_ATTENTION_STYLES

# Per-channel statistics of the Wan2.2 TI2V VAE latents (from its published diffusers config).
WAN22_LATENTS_MEAN = [
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
    -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
    -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
    -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
    0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
]  # fmt: skip
WAN22_LATENTS_STD = [
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
    0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
    0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
    0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
]  # fmt: skip

# peft target regex (full match on module names inside WanTransformer3DModel): per block, self and cross
# attention q/k/v/out projections and both feed-forward linears. View-attention modules live outside the
# base model and are never matched.
LORA_TARGET_REGEX = (
    r"blocks\.\d+\.(attn1|attn2)\.(to_q|to_k|to_v|to_out\.0)|blocks\.\d+\.ffn\.net\.(0\.proj|2)"
)


@dataclass
class HeadConfig:
    """Sizes of the rotation/gripper head."""

    width: int = 1536
    conv_channels: tuple[int, ...] = (256, 512, 1024)
    local_patch: int = 5  # latent pixels around each heatmap peak
    num_layers: int = 4
    num_heads: int = 16
    ffn_mult: int = 4
    dropout: float = 0.0

    def __post_init__(self) -> None:
        self.conv_channels = tuple(int(c) for c in self.conv_channels)
        if self.width % self.num_heads:
            raise ValueError(f"head width {self.width} must be divisible by num_heads {self.num_heads}")
        if self.local_patch < 1 or not self.conv_channels or self.num_layers < 1:
            raise ValueError("head needs local_patch >= 1, at least one conv stage and one layer")


@dataclass
class MVVDPConfig:
    transformer: dict[str, Any]
    vae: dict[str, Any]
    head: HeadConfig = field(default_factory=HeadConfig)
    num_rgb_views: int = 3
    future_frames: int = 24
    image_size: int = 256
    text_len: int = 512
    lora_rank: int = 32
    lora_alpha: int = 32
    lora_targets: str = LORA_TARGET_REGEX
    view_attention_heads: int = 24
    # plain: random init, zero output projection, no gate (models from scratch; every checkpoint written
    # before the field existed); wan: initialised from each block's pretrained self-attention, zero-started
    # gate (the pretrained-base preset)
    view_attention_style: str = "plain"
    num_inference_steps: int = 5
    num_train_timesteps: int = 1000
    flow_shift: float = 5.0
    sigma: float = 1.5
    rgb_loss_weight: float = 0.5
    rotation_bins: int = 72
    control_period: float = 0.1  # seconds between predicted frames
    workspace_center: tuple[float, float, float] = (0.5, 0.0, 0.4)
    workspace_edge: float = 1.0
    base_model_path: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.head, dict):
            self.head = HeadConfig(**self.head)
        self.workspace_center = tuple(float(c) for c in self.workspace_center)
        if self.future_frames % self.temporal_compression:
            raise ValueError(
                f"future_frames ({self.future_frames}) must be a multiple of the VAE temporal compression "
                f"({self.temporal_compression})"
            )
        if self.image_size % (self.spatial_compression * self.transformer["patch_size"][1]):
            raise ValueError(f"image_size {self.image_size} must be divisible by the latent patch grid")
        if self.num_inference_steps < 1 or self.control_period <= 0 or self.sigma <= 0:
            raise ValueError("num_inference_steps >= 1, control_period > 0 and sigma > 0 are required")
        if self.lora_rank < 0 or (self.lora_rank > 0 and self.lora_alpha <= 0):
            raise ValueError(f"lora_rank must be >= 0 (0: no LoRA) with lora_alpha > 0, got {self.lora_rank}")
        if not 0.0 <= self.rgb_loss_weight <= 1.0:
            raise ValueError(f"rgb_loss_weight must be in [0, 1], got {self.rgb_loss_weight}")
        inner = self.transformer["num_attention_heads"] * self.transformer["attention_head_dim"]
        if inner % self.view_attention_heads:
            raise ValueError(f"transformer width {inner} not divisible by {self.view_attention_heads} heads")
        style = self.view_attention_style
        if style not in VIEW_ATTENTION_STYLES:
            raise ValueError(f"view_attention_style must be one of {VIEW_ATTENTION_STYLES}, got {style!r}")
        if style == "wan" and self.view_attention_heads != self.transformer["num_attention_heads"]:
            raise ValueError("the 'wan' view attention style needs as many heads as the transformer")
        self.workspace()  # validates centre and edge

    # Derived sizes --------------------------------------------------------------------------------
    @property
    def num_views(self) -> int:
        """RGB views followed by the same number of heatmap views."""
        return 2 * self.num_rgb_views

    @property
    def temporal_compression(self) -> int:
        return int(self.vae.get("scale_factor_temporal", 4))

    @property
    def spatial_compression(self) -> int:
        return int(self.vae.get("scale_factor_spatial", 8))

    @property
    def latent_channels(self) -> int:
        return int(self.vae["z_dim"])

    @property
    def latent_frames(self) -> int:
        return 1 + self.future_frames // self.temporal_compression

    @property
    def latent_size(self) -> int:
        return self.image_size // self.spatial_compression

    @property
    def text_dim(self) -> int:
        return int(self.transformer["text_dim"])

    def workspace(self) -> Workspace:
        return Workspace(center=self.workspace_center, edge=self.workspace_edge, resolution=self.image_size)

    # Serialisation --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MVVDPConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown MVVDPConfig fields: {unknown}")
        data = dict(data)
        for key in ("transformer", "vae"):
            data[key] = {
                k: tuple(v) if isinstance(v, list) and k == "patch_size" else v for k, v in data[key].items()
            }
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> MVVDPConfig:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> MVVDPConfig:
        return cls.from_json(Path(path).read_text())

    # Presets --------------------------------------------------------------------------------------
    @property
    def uses_lora(self) -> bool:
        """LoRA adapters on a frozen base (rank > 0), or all transformer weights trained (rank 0)."""
        return self.lora_rank > 0

    @classmethod
    def _preset(
        cls,
        transformer: dict[str, Any],
        vae: dict[str, Any],
        head: HeadConfig,
        settings: dict[str, Any],
        overrides: dict[str, Any],
    ) -> MVVDPConfig:
        """A preset with overrides: transformer / vae dicts update the preset's keys, head takes a HeadConfig
        or a dict of its fields, every other key replaces the preset's setting."""
        overrides = dict(overrides)
        transformer = {**transformer, **overrides.pop("transformer", {})}
        vae = {**vae, **overrides.pop("vae", {})}
        head_override = overrides.pop("head", None)
        if isinstance(head_override, dict):
            head = HeadConfig(**{**asdict(head), **head_override})
        elif head_override is not None:
            head = head_override
        return cls(transformer=transformer, vae=vae, head=head, **{**settings, **overrides})

    @classmethod
    def wan22_ti2v_5b(cls, **overrides: Any) -> MVVDPConfig:
        """The paper's model: Wan2.2-TI2V-5B transformer and VAE, 256 px views, 24 future frames."""
        transformer = dict(
            patch_size=(1, 2, 2), num_attention_heads=24, attention_head_dim=128, in_channels=48,
            out_channels=48, text_dim=4096, freq_dim=256, ffn_dim=14336, num_layers=30, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
        )  # fmt: skip
        vae = dict(
            base_dim=160, decoder_base_dim=256, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
            attn_scales=[], temperal_downsample=[False, True, True], dropout=0.0, is_residual=True,
            in_channels=12, out_channels=12, patch_size=2, scale_factor_temporal=4, scale_factor_spatial=16,
            latents_mean=list(WAN22_LATENTS_MEAN), latents_std=list(WAN22_LATENTS_STD),
        )  # fmt: skip
        return cls._preset(transformer, vae, HeadConfig(), {"view_attention_style": "wan"}, overrides)

    @classmethod
    def tiny(cls, **overrides: Any) -> MVVDPConfig:
        """Same structure at toy sizes: builds and runs the whole path on a CPU in seconds (unit tests)."""
        transformer = dict(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=8, out_channels=8,
            text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
        )  # fmt: skip
        vae = dict(
            base_dim=8, decoder_base_dim=8, z_dim=8, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
            temperal_downsample=[False, True, True], dropout=0.0, is_residual=True, in_channels=12,
            out_channels=12, patch_size=2, scale_factor_temporal=4, scale_factor_spatial=16,
            latents_mean=[0.0] * 8, latents_std=[1.0] * 8,
        )  # fmt: skip
        head = HeadConfig(width=32, conv_channels=(16, 32), local_patch=3, num_layers=4, num_heads=2)
        settings = dict(image_size=64, text_len=8, lora_rank=4, lora_alpha=4, view_attention_heads=2)
        return cls._preset(transformer, vae, head, settings, overrides)

    @classmethod
    def small(cls, **overrides: Any) -> MVVDPConfig:
        """A model that learns a task from scratch on a CPU: 64 px views, 16x16x16 latents (spatial x4, so the
        heatmap position survives the VAE), 2x2 latent patches per token, 4 blocks of width 128; all weights
        train (no LoRA)."""
        transformer = dict(
            patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=32, in_channels=16,
            out_channels=16, text_dim=32, freq_dim=64, ffn_dim=512, num_layers=4, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
        )  # fmt: skip
        vae = dict(
            base_dim=8, decoder_base_dim=8, z_dim=16, dim_mult=[1, 2, 2], num_res_blocks=1, attn_scales=[],
            temperal_downsample=[True, True], dropout=0.0, is_residual=True, in_channels=3,
            out_channels=3, patch_size=None, scale_factor_temporal=4, scale_factor_spatial=4,
            latents_mean=[0.0] * 16, latents_std=[1.0] * 16,
        )  # fmt: skip
        head = HeadConfig(width=64, conv_channels=(32, 64), local_patch=3, num_layers=4, num_heads=4)
        settings = dict(image_size=64, text_len=8, lora_rank=0, lora_alpha=0, view_attention_heads=4)
        return cls._preset(transformer, vae, head, settings, overrides)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> MVVDPConfig:
        """A preset by name: tiny | small | wan22."""
        builders = {"tiny": cls.tiny, "small": cls.small, "wan22": cls.wan22_ti2v_5b}
        if name not in builders:
            raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(builders)}")
        return builders[name](**overrides)

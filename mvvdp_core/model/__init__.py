"""MV-VDP model: multi-view Wan transformer (view attention, LoRA), VAE wrapper, rotation/gripper head."""

from mvvdp_core.model.checkpoint import (
    CheckpointError,
    ModelParts,
    build_model_parts,
    load_checkpoint,
    save_checkpoint,
    upgrade_checkpoint,
)
from mvvdp_core.model.config import HeadConfig, MVVDPConfig
from mvvdp_core.model.head import RotationGripperHead, head_loss
from mvvdp_core.model.text import TextEncoderError, encode_prompts
from mvvdp_core.model.transformer import MultiViewWanTransformer
from mvvdp_core.model.vae import VideoVAE

__all__ = [
    "CheckpointError",
    "HeadConfig",
    "MVVDPConfig",
    "ModelParts",
    "MultiViewWanTransformer",
    "RotationGripperHead",
    "TextEncoderError",
    "VideoVAE",
    "build_model_parts",
    "encode_prompts",
    "head_loss",
    "load_checkpoint",
    "save_checkpoint",
    "upgrade_checkpoint",
]

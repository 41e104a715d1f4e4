"""Downstream stage: semantic-code embeddings, CTR backbones and the CTR model."""

from moc_fast._extras import require

require("torch", "safetensors", feature="moc_fast.nn (CTR models)")

from moc_fast.nn.backbones import BACKBONES, DNN, IPNN, AutoIntPlus, DCNv2, DeepFM, make_backbone
from moc_fast.nn.ctr import CTRModel
from moc_fast.nn.embeddings import FieldEmbedding, MultiEmbedding
from moc_fast.nn.item_codes import ItemCodes
from moc_fast.nn.moc_embedding import MoCEmbedding

__all__ = [
    "BACKBONES",
    "DNN",
    "IPNN",
    "AutoIntPlus",
    "CTRModel",
    "DCNv2",
    "DeepFM",
    "FieldEmbedding",
    "ItemCodes",
    "MoCEmbedding",
    "MultiEmbedding",
    "make_backbone",
]

"""Optional dependencies: a clear ImportError naming the extra to install, not a bare one."""

from __future__ import annotations

import importlib

EXTRAS = {  # module -> the extra that installs it
    "torch": "torch",
    "safetensors": "torch",
    "tqdm": "torch",
    "sentence_transformers": "text",
    "yaml": "study",
    "matplotlib": "study",
}


def require(*modules: str, feature: str) -> None:
    """Raise ImportError naming `pip install 'moc-fast[extra]'` if any module is missing."""
    missing = []
    for m in modules:
        try:
            importlib.import_module(m)
        except ImportError:
            missing.append(m)
    if missing:
        extra = EXTRAS.get(missing[0], "torch")
        raise ImportError(
            f"{feature} needs {', '.join(missing)}, which is not installed: "
            f"pip install 'moc-fast[{extra}]'"
        )

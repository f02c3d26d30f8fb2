"""dataforge: manufacture instruction-tuning data and train on it."""

__version__ = "0.1.0"

from ._hf_register import install as _install_hf_registration

_install_hf_registration()     # AutoModelForCausalLM loads dataforge checkpoints once dataforge is imported

"""``python -m kinema ...``: the ``kinema`` command line, so that ``torchrun --nproc-per-node N -m
kinema train CONFIG.yaml`` starts N training processes (torchrun runs modules, not console scripts)."""

from .cli import entry

if __name__ == "__main__":
    entry()

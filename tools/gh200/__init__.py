"""gh200-stack: the bundle that turns a dual-GH200 workstation into a reproducible inference host."""

__version__ = "0.1.0"

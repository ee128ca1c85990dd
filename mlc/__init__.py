"""mlc: a machine-learning compiler toolchain.

The top-level folders of the repository (cli/, ir/, passes/, codegen/, runtime/, frontend/, ann/)
install as subpackages of this namespace.
"""

__version__ = "0.1.0"

"""anac: compile ONNX models to analog in-memory-computing chips.

The Python API lives in ``compiler.api`` (compile_model, load_program,
simulate, verify); importing this package imports nothing else.
"""

__version__ = "0.1.0"

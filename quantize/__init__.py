"""Quantization: the table of formats, the scale search and the converter (installed as qllama.quantize)."""

"""Triton kernels of fastrobust, installed as ``fastrobust.kernels``.

Imported only when a Triton launch is needed; nothing here runs at ``import fastrobust``.
"""

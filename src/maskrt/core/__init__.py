"""The bottom layer of maskrt: errors, image loading, versions, file helpers and the artifact schemas.

Everything else (training, export, runtime, plugins, cli) may import from here; this package imports none of them.
"""

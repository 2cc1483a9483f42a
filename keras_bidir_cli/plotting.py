"""matplotlib for the commands' pictures, or None where it is not installed."""


def pyplot():
    """`matplotlib.pyplot` on the Agg backend, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt

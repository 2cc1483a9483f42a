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


def save(figure, axis, path, dpi):
    """Grid and legend on `axis`, then `figure` saved to `path` and closed."""
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    pyplot().close(figure)

"""Pictures of what the networks learn and compute, written as PNG files with matplotlib.

    import zoo.plot
    zoo.plot.curves("lenet5-mnist5k")                 # loss and accuracy per epoch
    zoo.plot.filters("lenet5-mnist5k")                # the first convolution's kernels
    zoo.plot.features("lenet5-mnist5k", "digit.png")  # each stage's feature maps for one image
    zoo.plot.edges("photo.jpg")                       # the lecture's Sobel K1, K2 and magnitude
    zoo.plot.latent("conv_autoencoder-mnist5k")       # digits in the 2-D code, decodes over it

Each function writes one picture and returns its path: `out` if given (checked writable before
any work), else under plots/ in the current folder: a checkpoint's picture as
plots/<registry folder>/<name>-step_<N>-<picture>.png, so the same name in two registries, or two
steps of one run, never overwrite each other; edges as plots/<image file stem>-edges.png. The
command line is `zoo plot PICTURE`.
Nothing here opens a window (figures are drawn on matplotlib's Agg canvas), and `import zoo`
does not import this package, so matplotlib loads only when a picture is asked for.
"""

from zoo.plot.feature_maps import features
from zoo.plot.kernels import filters
from zoo.plot.latent_space import latent
from zoo.plot.sobel import edges
from zoo.plot.training_curves import curves

__all__ = ["curves", "edges", "features", "filters", "latent"]

"""Classification data: Fashion-MNIST (IDX files), ImageNet-layout folders, transforms, loaders."""
from botnet.data.errors import BadImageError, DataError, DatasetNotFoundError  # noqa: F401

"""Architecture families; importing this module registers every entrypoint."""

from segzoo.models import centernet  # noqa: F401
from segzoo.models import deeplab  # noqa: F401
from segzoo.models import fcn  # noqa: F401
from segzoo.models import hrnet  # noqa: F401
from segzoo.models import mask_rcnn  # noqa: F401
from segzoo.models import pspnet  # noqa: F401
from segzoo.models import unet  # noqa: F401

"""Architecture families; importing this module registers every entrypoint."""

from segzoo.models import (
    centernet,  # noqa: F401
    deeplab,  # noqa: F401
    eomt,  # noqa: F401
    fcn,  # noqa: F401
    hrnet,  # noqa: F401
    mask2former,  # noqa: F401
    mask_rcnn,  # noqa: F401
    panoptic_fpn,  # noqa: F401
    pspnet,  # noqa: F401
    segformer,  # noqa: F401
    unet,  # noqa: F401
    upernet,  # noqa: F401
)

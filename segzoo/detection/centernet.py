"""CenterNet targets, losses and decoding ("Objects as Points", Zhou et al. 2019).

Every function works on a whole batch at once. Conventions, as in the official code:

* an object of box ``(x1, y1, x2, y2)`` (input pixels) becomes, at output ``stride``,
  a centre ``c = ((x1 + x2) / 2, (y1 + y2) / 2) / stride``, a peak of its class heatmap
  at the integer cell ``floor(c)``, a size target ``(w, h) / stride`` and an offset
  target ``c - floor(c)``, both read at that cell;
* heatmap peaks are Gaussians with the CornerNet radius rule (:func:`gaussian_radius`,
  ``sigma = (2 r + 1) / 6``), merged with an element-wise maximum;
* decoding keeps the 3x3 local maxima of the sigmoid heatmap, takes the top ``k`` over
  all classes and cells, and turns each into ``centre +- size / 2`` scaled by ``stride``.

One deliberate difference: boxes are clipped to the image (``[0, W] x [0, H]`` in input
pixels) rather than to ``[0, W/stride - 1]`` output cells, so a box that touches the
right or bottom border keeps its true size and encode -> decode is exact.
"""

from __future__ import annotations

import torch

from segzoo.detection.boxes import clip_boxes, rank_in_group
from segzoo.layers.tracing import is_tracing


def gaussian_radius(height: torch.Tensor, width: torch.Tensor, min_overlap: float = 0.7) -> torch.Tensor:
    """CornerNet's radius rule, as the official CenterNet computes it.

    The smallest of three radii, one per way two corners can move while the box keeps
    an IoU of ``min_overlap`` with the truth. The official formulas (kept here, including
    their ``(b + sqrt(b^2 - 4ac)) / 2`` form, so the heatmaps are the same) are applied
    element-wise.

    Args:
        height: box heights (any shape), in output cells, already rounded up.
        width: box widths, same shape.
        min_overlap: the IoU a box at the radius keeps with the truth.

    Returns:
        Float64 radii (float32 on MPS); truncate with ``.floor()`` as the official code does.
    """
    dtype = torch.float32 if height.device.type == "mps" else torch.float64  # MPS has no float64
    h, w = height.to(dtype), width.to(dtype)
    b1 = h + w
    c1 = w * h * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + torch.sqrt(b1 ** 2 - 4 * c1)) / 2
    b2 = 2 * (h + w)
    c2 = (1 - min_overlap) * w * h
    r2 = (b2 + torch.sqrt(b2 ** 2 - 16 * c2)) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (h + w)
    c3 = (min_overlap - 1) * w * h
    r3 = (b3 + torch.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return torch.minimum(torch.minimum(r1, r2), r3)


def encode_targets(
    boxes: torch.Tensor,
    labels: torch.Tensor,
    image_idx: torch.Tensor,
    image_sizes: torch.Tensor,
    *,
    num_classes: int,
    out_size: tuple[int, int],
    stride: int,
    max_objects: int | None = None,
) -> dict[str, torch.Tensor]:
    """Heatmap, size and offset targets for a batch of images.

    Args:
        boxes: ``M x 4`` xyxy boxes of all images, input pixels.
        labels: ``M`` int64 0-based labels.
        image_idx: ``M`` int64: which image each box belongs to.
        image_sizes: ``N x 2`` (height, width) of each unpadded image.
        num_classes: heatmap channels.
        out_size: ``(H, W)`` of the output maps.
        stride: input pixels per output cell.
        max_objects: keep only the first ``max_objects`` boxes of each image (in the order
            given, before dropping empty ones), as the official code's ``max_objs`` (128 for
            COCO); None keeps all.

    Returns:
        ``heatmap``: ``N x C x H x W`` Gaussian peaks in [0, 1]; for the ``P`` boxes
        that keep a positive size after clipping: ``index`` (``P``, flat index into
        ``N * H * W``), ``size`` (``P x 2``, width and height in output cells) and
        ``offset`` (``P x 2``, sub-cell x and y of the centre).
    """
    n = image_sizes.shape[0]
    oh, ow = out_size
    dev = boxes.device
    b = clip_boxes(boxes.float()[:, None], image_sizes[image_idx])[:, 0] / stride  # (M, 4) in cells
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    keep = (w > 0) & (h > 0)
    if max_objects is not None:
        keep = keep & (rank_in_group(image_idx, n) < max_objects)
    b, w, h, labels, image_idx = b[keep], w[keep], h[keep], labels[keep], image_idx[keep]
    centre = torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], dim=1)  # (P, 2) x, y
    cell = centre.floor().long()
    cell[:, 0].clamp_(max=ow - 1)  # only a centre exactly on the padded border needs this
    cell[:, 1].clamp_(max=oh - 1)
    radius = gaussian_radius(h.ceil(), w.ceil()).floor().clamp(min=0).float()  # (P,)
    sigma = (2 * radius + 1) / 6
    # one separable Gaussian per object over the whole map, cut at the radius
    dx = torch.arange(ow, device=dev).view(1, ow) - cell[:, :1]  # (P, W)
    dy = torch.arange(oh, device=dev).view(1, oh) - cell[:, 1:]  # (P, H)
    gx = torch.exp(-(dx ** 2) / (2 * sigma[:, None] ** 2)) * (dx.abs() <= radius[:, None])
    gy = torch.exp(-(dy ** 2) / (2 * sigma[:, None] ** 2)) * (dy.abs() <= radius[:, None])
    peaks = (gy[:, :, None] * gx[:, None, :]).flatten(1)  # (P, H*W)
    heatmap = torch.zeros(n * num_classes, oh * ow, device=dev)
    rows = (image_idx * num_classes + labels)[:, None].expand_as(peaks)  # (P, H*W) target rows
    heatmap.scatter_reduce_(0, rows, peaks, "amax", include_self=True)
    index = (image_idx * oh + cell[:, 1]) * ow + cell[:, 0]
    return {
        "heatmap": heatmap.view(n, num_classes, oh, ow),
        "index": index,
        "size": torch.stack([w, h], dim=1),
        "offset": centre - cell.to(centre.dtype),
    }


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, beta: float = 4.0,
               eps: float = 1e-4) -> torch.Tensor:
    """CornerNet's penalty-reduced pixel-wise focal loss, normalised by the number of peaks.

    ``-(sum_peaks (1-p)^a log p + sum_others (1-y)^b p^a log(1-p)) / max(#peaks, 1)``,
    with ``p = sigmoid(logits)`` clamped to ``[eps, 1 - eps]`` as in the official code.

    Args:
        logits: ``N x C x H x W`` heatmap logits.
        target: same shape, Gaussian heatmap with peaks exactly 1.
    """
    p = torch.sigmoid(logits.float()).clamp(eps, 1 - eps)
    pos = target.eq(1).float()
    pos_loss = torch.log(p) * (1 - p) ** alpha * pos
    neg_loss = torch.log(1 - p) * p ** alpha * (1 - target) ** beta * (1 - pos)
    return -(pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp(min=1)


def gather_at(maps: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Values of ``N x D x H x W`` maps at flat ``N*H*W`` indices: ``P x D``."""
    n, d, h, w = maps.shape
    flat = maps.permute(0, 2, 3, 1).reshape(n * h * w, d)  # (N*H*W, D)
    return flat[index]


def regression_l1(maps: torch.Tensor, index: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Official ``RegL1Loss``: summed L1 at the object cells over ``2 * #objects + 1e-4``."""
    pred = gather_at(maps.float(), index)
    return (pred - target).abs().sum() / (target.numel() + 1e-4)


def local_max(x: torch.Tensor, kernel: int = 3) -> torch.Tensor:
    """``F.max_pool2d(x, kernel, stride=1, padding=kernel // 2)``: the maximum of each cell's
    ``kernel x kernel`` window, cells outside the map left out (max-pool pads with -inf).

    Computed as two separable passes of element-wise maxima of shifted slices, written in place
    into two new buffers (no padded copy): maxima are exact, so the result equals the max-pool bit
    for bit (NaN spreads to the windows that hold one, as in the max-pool), at 0.1x of its time on
    contiguous maps (PyTorch's CPU max-pool is vectorised over channels only in channels_last) and
    0.8x on channels_last ones. ``kernel=1`` returns ``x`` itself; otherwise a new tensor.

    Args:
        x: ``N x C x H x W``, any memory layout.
        kernel: an odd window size.
    """
    if isinstance(kernel, bool) or not isinstance(kernel, int) or kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"kernel must be an odd positive int (3 in the official decoding), got {kernel!r}")
    if kernel == 1:
        return x
    out = x
    for dim in (-1, -2):  # along rows, then along columns of the row maxima
        src, out = out, out.clone()
        for d in range(1, min(kernel // 2, src.shape[dim] - 1) + 1):
            right, left = out.narrow(dim, d, src.shape[dim] - d), out.narrow(dim, 0, src.shape[dim] - d)
            right.clamp_min_(src.narrow(dim, 0, src.shape[dim] - d))  # in place: max, NaN spreading
            left.clamp_min_(src.narrow(dim, d, src.shape[dim] - d))
    return out


def _first_k(x: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (ascending) of the ``k`` best entries of each row of ``x`` (``N x L``): greater
    first, NaN above all (as :func:`torch.topk`), and among equal values the lower index."""
    kth = x.topk(k, dim=1).values[:, -1:]  # (N, 1), the k-th best value
    nan, kth_nan = x.isnan(), kth.isnan()
    above = (x > kth) | (nan & ~kth_nan)  # fewer than k entries
    tied = (x == kth) | (nan & kth_nan)
    chosen = above | (tied & (tied.cumsum(1) <= k - above.sum(1, keepdim=True)))  # exactly k per row
    length = x.shape[1]
    key = torch.where(chosen, length - torch.arange(length, device=x.device), 0)  # unique where chosen
    return key.topk(k, dim=1).indices  # descending key: ascending index


# up to this k, top_k orders its k entries by k x k comparisons (exported to ONNX); above, by a
# stable sort (eager), so that a large k takes no k x k memory
_PAIRWISE_MAX_K = 256


def top_k(x: torch.Tensor, k: int, row: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best entries of each row of ``x`` (``N x L``), best first, equal values in index
    order, NaN above all: the first ``k`` of a stable descending sort, without sorting ``L``.

    ``torch.topk`` over a whole CenterNet heatmap (80 classes x 128 x 128 cells) leaves the order
    of equal scores to the kernel and builds an ``L``-entry work buffer each call. Here the rows
    of ``row`` entries whose maxima are the ``k`` best (ties to the lower row) hold every
    selected entry, so only those ``k * row`` candidates are ranked.

    Args:
        x: ``N x L`` values; ``L`` a multiple of ``row`` (a heatmap's width, say).
        k: entries per row of ``x``, at most ``L``.
        row: the length of the contiguous segments first ranked by their maxima.

    Returns:
        ``values`` and ``indices`` into ``L``, both ``N x k``.
    """
    n, length = x.shape
    if not 0 <= k <= length:
        raise ValueError(f"top_k needs 0 <= k <= L; got k={k}, L={length}")
    if k == 0:
        return x[:, :0], torch.zeros(n, 0, dtype=torch.long, device=x.device)
    if row < 1 or length % row:
        raise ValueError(f"top_k needs L a multiple of row; got L={length}, row={row}")
    index = None
    if k < length // row and row > 1:
        rows = _first_k(x.view(n, length // row, row).amax(-1), k)  # (N, k) ascending
        index = (rows[..., None] * row + torch.arange(row, device=x.device)).flatten(1)  # (N, k * row)
        x = x.gather(1, index)
    pos = _first_k(x, k)  # ascending
    values = x.gather(1, pos)
    if k > _PAIRWISE_MAX_K and not is_tracing():
        values, order = values.sort(dim=1, descending=True, stable=True)
        pos = pos.gather(1, order)
    else:
        # each entry's place among the k: how many of the others come before it (k x k
        # comparisons, which export, where a stable sort does not to ONNX)
        a, b = values[:, None, :], values[:, :, None]  # a: the other entry j, b: the entry i
        tied = (a == b) | (a.isnan() & b.isnan())
        earlier = torch.ones(k, k, dtype=torch.bool, device=x.device).tril(-1)  # j < i
        place = ((a > b) | (a.isnan() & ~b.isnan()) | (tied & earlier)).sum(-1)  # a permutation of 0..k-1
        pos = torch.empty_like(pos).scatter_(1, place, pos)
        values = torch.empty_like(values).scatter_(1, place, values)
    return values, pos if index is None else index.gather(1, pos)


@torch.no_grad()
def decode(
    heatmap: torch.Tensor,
    size: torch.Tensor,
    offset: torch.Tensor,
    stride: int,
    k: int = 100,
    kernel: int = 3,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``k`` detections of each image from CenterNet's output maps, batched.

    Args:
        heatmap: ``N x C x H x W`` class probabilities (after the sigmoid).
        size: ``N x 2 x H x W`` box width and height in output cells.
        offset: ``N x 2 x H x W`` sub-cell centre offsets (x, y).
        stride: input pixels per output cell.
        k: detections per image (capped at ``C * H * W``).
        kernel: max-pool window that keeps the local peaks (odd; :func:`local_max`).

    Returns:
        ``boxes`` (``N x k x 4`` xyxy input pixels, not clipped), ``scores`` (``N x k``)
        and ``labels`` (``N x k`` int64, 0-based), best first; equal scores in (class, row,
        column) order (:func:`top_k`), so a decoding does not depend on the kernel's tie order.
    """
    n, c, h, w = heatmap.shape
    peak = local_max(heatmap, kernel)  # a new buffer unless kernel is 1 (then every cell is a peak)
    heat = heatmap if peak is heatmap else peak.eq_(heatmap).mul_(heatmap)  # heatmap * (peak == heatmap)
    k = min(k, c * h * w)
    scores, idx = top_k(heat.reshape(n, c * h * w), k, row=w)  # (N, k) over classes and cells together
    labels = idx // (h * w)
    cell = idx % (h * w)
    ys = (cell // w).to(heatmap.dtype)
    xs = (cell % w).to(heatmap.dtype)
    flat = cell + torch.arange(n, device=idx.device).view(n, 1) * (h * w)  # index into N*H*W
    reg = gather_at(offset, flat.flatten()).view(n, k, 2)
    wh = gather_at(size, flat.flatten()).view(n, k, 2)
    cx, cy = xs + reg[..., 0], ys + reg[..., 1]
    boxes = torch.stack([cx - wh[..., 0] / 2, cy - wh[..., 1] / 2,
                         cx + wh[..., 0] / 2, cy + wh[..., 1] / 2], dim=-1) * stride
    return boxes, scores, labels.long()

import numpy as np
import pytest
import torch
from PIL import Image

from segzoo import visualize as vis


def test_palette_is_the_voc_colour_map():
    pal = vis.color_palette(21)
    assert pal.dtype == torch.uint8 and pal.shape == (21, 3)
    assert pal[0].tolist() == [0, 0, 0]
    assert pal[1].tolist() == [128, 0, 0] and pal[15].tolist() == [192, 128, 128]
    assert len({tuple(c) for c in vis.color_palette(256).tolist()}) == 256


def test_draw_semantic_colours_each_class_and_skips_ignore():
    img = torch.zeros(3, 20, 30)
    mask = torch.zeros(20, 30, dtype=torch.long)
    mask[:, 10:20] = 1
    mask[:, 20:] = 255
    out = vis.draw_semantic(img, mask, num_classes=2, alpha=1.0)
    assert out.dtype == torch.uint8 and out.shape == (3, 20, 30)
    pal = vis.color_palette(2)
    assert out[:, 5, 15].tolist() == pal[1].tolist()
    assert out[:, 5, 25].tolist() == [0, 0, 0]  # ignore_index left as the image
    # logits are reduced with argmax
    logits = torch.nn.functional.one_hot(mask.clamp(max=1), 2).permute(2, 0, 1).float()
    assert torch.equal(vis.draw_semantic(img, logits, alpha=1.0)[:, :, :20], out[:, :, :20])


def test_draw_semantic_legend_and_errors():
    img = torch.rand(3, 48, 32)
    mask = torch.randint(0, 3, (48, 32))
    out = vis.draw_semantic(img, mask, class_names=["bg", "cat", "dog"], legend=True)
    assert out.shape[1] == 48 and out.shape[2] > 32
    with pytest.raises(ValueError, match="class_names"):
        vis.draw_semantic(img, mask, legend=True)
    with pytest.raises(ValueError, match="H x W"):
        vis.draw_semantic(img, mask[:10])
    with pytest.raises(ValueError, match="num_classes=2"):
        vis.draw_semantic(img, mask, num_classes=2)


def test_draw_instances_filters_by_score():
    img = torch.zeros(3, 40, 40, dtype=torch.uint8)
    masks = torch.zeros(2, 40, 40)
    masks[0, 5:15, 5:15] = 0.9
    masks[1, 25:35, 25:35] = 0.9
    pred = {"boxes": torch.tensor([[5.0, 5, 15, 15], [25.0, 25, 35, 35]]), "labels": torch.tensor([0, 1]),
            "scores": torch.tensor([0.9, 0.2]), "masks": masks}
    out = vis.draw_instances(img, pred, class_names=["a", "b"], score_thresh=0.5)
    assert out.shape == (3, 40, 40)
    assert out[:, 10, 10].sum() > 0  # kept instance drawn
    assert out[:, 30, 30].sum() == 0  # low score not drawn
    gt = {"boxes": pred["boxes"], "labels": pred["labels"], "masks": masks > 0.5}  # no scores: all drawn
    assert vis.draw_instances(img, gt)[:, 30, 30].sum() > 0


def test_side_by_side_and_saving(tmp_path):
    a, b = torch.rand(3, 20, 30), torch.randint(0, 255, (3, 16, 10), dtype=torch.uint8)
    panel = vis.side_by_side([a, b, np.zeros((12, 8, 3), np.uint8)], ["image", "pred", "gt"], gap=2)
    assert panel.dtype == torch.uint8 and panel.shape == (3, 20 + 16, 30 + 10 + 8 + 4)
    assert torch.equal(panel[:, 16:32, 32:42], b)
    vis.save_image(panel, tmp_path / "sub" / "p.png")
    assert np.array(Image.open(tmp_path / "sub" / "p.png")).shape == (36, 52, 3)
    mask = torch.randint(0, 21, (9, 7))
    vis.save_mask(mask, tmp_path / "m.png")
    back = Image.open(tmp_path / "m.png")
    assert back.mode == "P" and np.array_equal(np.array(back), mask.numpy())
    assert vis.to_uint8(tmp_path / "sub" / "p.png").shape == (3, 36, 52)


def test_semantic_overlay_leaves_the_background_as_the_photo():
    """Class 0 is left undrawn when it is the background (named so, or no names), not painted black."""
    img = torch.rand(3, 32, 32)
    mask = torch.zeros(32, 32, dtype=torch.long)
    mask[8:24, 8:24] = 1
    photo = vis.to_uint8(img)
    for names in (None, ["background", "cat"], ["Background", "cat"], ["_background_", "cat"]):
        out = vis.draw_semantic(img, mask, num_classes=2, class_names=names)
        assert torch.equal(out[:, :8], photo[:, :8]), names  # background pixels: the photo itself
        assert not torch.equal(out[:, 8:24, 8:24], photo[:, 8:24, 8:24])
    road = vis.draw_semantic(img, mask, num_classes=2, class_names=["road", "car"])  # Cityscapes' class 0
    assert not torch.equal(road[:, :8], photo[:, :8])
    assert torch.equal(vis.draw_semantic(img, mask, num_classes=2, skip_background=False), road)


def test_semantic_legend_lists_the_drawn_classes_only():
    img = torch.rand(3, 40, 30)
    mask = torch.zeros(40, 30, dtype=torch.long)
    mask[5:15, 5:15] = 1
    with_bg = vis.draw_semantic(img, mask, class_names=["road", "car"], legend=True)
    without_bg = vis.draw_semantic(img, mask, class_names=["background", "car"], legend=True)
    legend = without_bg[:, :, 30:]
    # one swatch row (the car) instead of two: the second row of the legend is blank
    assert (legend[:, 22:34] == 255).all() and not (with_bg[:, 22:34, 30:] == 255).all()


def test_detection_labels_sit_on_filled_tags_that_contrast():
    img = torch.zeros(3, 64, 64, dtype=torch.uint8)
    pred = {"boxes": torch.tensor([[20.0, 30.0, 50.0, 60.0], [0.0, 0.0, 20.0, 20.0]]),
            "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([0, 1])}
    out = vis.draw_instances(img, pred, ["cat", "dog"], score_thresh=0.5, alpha=0.0)
    colors = vis.instance_palette(2)
    tag = out[:, 20:29, 21:40]  # above the first box (room there), filled with its colour
    fill = colors[0].view(3, 1, 1)
    share = (tag == fill).all(0).float().mean()
    assert share > 0.4, share
    text = vis._text_color(colors[0].tolist())
    near_text = (tag.int() - torch.tensor(text).view(3, 1, 1)).abs().amax(0) < 60  # antialiased glyphs
    assert near_text.float().mean() > 0.05  # the text, in the contrasting colour
    # the box at the top edge has no room above: its tag sits inside, at its top
    assert (out[:, 1:8, 1:15] == colors[1].view(3, 1, 1)).all(0).float().mean() > 0.4

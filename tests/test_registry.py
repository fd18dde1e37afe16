import pytest
import torch
from torch import nn

import segzoo
from segzoo import registry
from segzoo.models.fcn import FCN
from segzoo.models.unet import UNet
from segzoo.registry import ModelSpec, register_model


def test_list_models_pattern_and_task():
    names = segzoo.list_models()
    assert "fcn_resnet50" in names and names == sorted(names)
    assert segzoo.list_models("fcn_*") == [n for n in names if n.startswith("fcn_")]
    assert "fcn_resnet50" in segzoo.list_models(task="semantic")
    assert "fcn_resnet50" not in segzoo.list_models(task="detection")
    with pytest.raises(ValueError, match="task must be one of"):
        segzoo.list_models(task="classification")
    assert segzoo.list_models(task="panoptic") == ["panoptic_fpn_mobilenetv2", "panoptic_fpn_resnet18",
                                                   "panoptic_fpn_resnet50"]


def test_unknown_name_names_closest():
    with pytest.raises(KeyError, match="fcn_resnet50"):
        segzoo.build("fcn_resnet5")


def test_unknown_kwarg_lists_accepted():
    with pytest.raises(TypeError, match=r"num_clases.*did you mean 'num_classes'.*accepted arguments"):
        segzoo.build("fcn_resnet50", num_clases=3)


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="registered twice"):
        @register_model
        def fcn_resnet50(**kwargs) -> FCN:  # noqa: F811
            return FCN(**kwargs)


class Classifier(nn.Module):
    task = "classification"


def test_bad_task_raises():
    with pytest.raises(ValueError, match="task must be one of"):
        @register_model
        def classifier_net(**kwargs) -> Classifier:
            return Classifier()


def test_spec_records_build_arguments_and_roundtrips_json():
    m = segzoo.build("fcn_resnet50", num_classes=4, backbone="resnet18", aux_loss=False)
    spec = m.spec
    assert spec.name == "fcn_resnet50" and spec.task == "semantic" and spec.num_classes == 4
    assert spec.kwargs == {"backbone": "resnet18", "aux_loss": False}
    assert ModelSpec.from_json(spec.to_json()) == spec
    assert spec.mean == (0.485, 0.456, 0.406)


def test_entrypoint_called_directly_sets_spec():
    from segzoo.models.fcn import fcn_resnet50

    m = fcn_resnet50(num_classes=2, backbone="resnet18")
    assert m.spec.name == "fcn_resnet50" and m.spec.num_classes == 2


def test_non_json_kwarg_is_refused():
    with pytest.raises(TypeError, match="JSON-serialisable"):
        segzoo.build("fcn_resnet50", num_classes=2, backbone="resnet18", mean=torch.zeros(3))


def test_bad_num_classes():
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        segzoo.build("fcn_resnet50", num_classes=0, backbone="resnet18")


@pytest.fixture
def scratch_registry():
    """Entrypoints registered by a test are removed afterwards (other tests list every model)."""
    before = set(registry._REGISTRY)
    yield
    for name in set(registry._REGISTRY) - before:
        del registry._REGISTRY[name]


def test_task_comes_from_the_model_class():
    for name in segzoo.list_models():
        entry = registry.get_entry(name)
        assert entry.task == entry.cls.task
    assert set(segzoo.list_models(task="instance")) >= {"maskrcnn_resnet50_fpn", "maskrcnn_resnet18_fpn"}
    assert "fasterrcnn_resnet18_fpn" in segzoo.list_models(task="detection")
    m = segzoo.build("fasterrcnn_resnet18_fpn", num_classes=2)
    assert m.task == m.spec.task == "detection" and not hasattr(m, "with_mask")


def test_entrypoint_without_a_model_class_is_refused(scratch_registry):
    with pytest.raises(TypeError, match="must declare the model class"):
        @register_model
        def unannotated_net(**kwargs):
            return FCN(**kwargs)
    with pytest.raises(TypeError, match="without arguments"):
        register_model("semantic")


def test_declared_class_and_built_model_must_agree(scratch_registry):
    @register_model
    def fcn_says_unet(**kwargs) -> FCN:
        return UNet(**kwargs)

    assert "fcn_says_unet" in segzoo.list_models(task="semantic")
    with pytest.raises(TypeError, match="declares FCN .* but built UNet"):
        segzoo.build("fcn_says_unet", num_classes=2, channels=(4, 8))


def test_display_name_says_the_backbone_built():
    m = segzoo.build("maskrcnn_resnet50_fpn", num_classes=2, backbone="resnet18")
    assert m.spec.display_name == "maskrcnn_resnet50_fpn (backbone=resnet18)"
    assert "instance" in m.spec.describe()
    assert segzoo.build("maskrcnn_resnet18_fpn", num_classes=2).spec.display_name == "maskrcnn_resnet18_fpn"
    assert ModelSpec.from_json(m.spec.to_json()).display_name == m.spec.display_name

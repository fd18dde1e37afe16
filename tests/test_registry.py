import pytest
import torch
from torch import nn

import segzoo
from segzoo.models.fcn import FCN
from segzoo.registry import ModelSpec, register_model


def test_list_models_pattern_and_task():
    names = segzoo.list_models()
    assert "fcn_resnet50" in names and names == sorted(names)
    assert segzoo.list_models("fcn_*") == [n for n in names if n.startswith("fcn_")]
    assert "fcn_resnet50" in segzoo.list_models(task="semantic")
    assert "fcn_resnet50" not in segzoo.list_models(task="detection")
    with pytest.raises(ValueError, match="task must be one of"):
        segzoo.list_models(task="classification")
    assert segzoo.list_models(task="panoptic") == []  # a task name reserved for later


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

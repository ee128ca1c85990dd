"""Export real architectures with today's torch.onnx (both exporters) as test models.

Run where torch, torchvision, transformers and timm are installed (the GPU machine; nothing is
downloaded: every model is built from a config with random weights):

    python tests/models/export_torch.py OUT_DIR

Large float initializers are stripped (`strip_weights`): the committed files keep the graph, every
small constant (shape constants, norms' parameters) and, for each stripped tensor, its shape and the
std of the exported random values, so tests refill it with seeded random numbers of the same scale
(tests/models/__init__.py `load`). The outputs only need to agree between mlc and onnxruntime on the
same weights, so the exported values themselves do not matter, and the files stay small.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

STRIP_ABOVE = 4096  # elements


def strip_weights(path: Path) -> dict[str, object]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=True)
    stripped: dict[str, object] = {}
    for init in model.graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype.kind == "f" and arr.size > STRIP_ABOVE:
            stripped[init.name] = {"shape": list(arr.shape), "dtype": str(arr.dtype), "std": float(arr.std()),
                                   "mean": float(arr.mean())}
            init.ClearField("raw_data")
            del init.float_data[:]
            del init.external_data[:]
            init.data_location = onnx.TensorProto.DEFAULT
            init.raw_data = b""
            init.doc_string = "mlc-stripped"
    for f in path.parent.glob(path.name + "*.data"):
        f.unlink()
    for f in path.parent.glob(path.stem + "*.data"):
        f.unlink()
    onnx.save(model, str(path))
    return stripped


def models():  # type: ignore[no-untyped-def]
    import torch
    import torchvision
    import transformers as tf

    torch.manual_seed(0)

    class Wrap(torch.nn.Module):
        """A HuggingFace model returning its first output tensor only."""

        def __init__(self, m: torch.nn.Module, key: str = "last_hidden_state"):
            super().__init__()
            self.m, self.key = m, key

        def forward(self, x, mask=None):  # type: ignore[no-untyped-def]
            return (self.m(x) if mask is None else self.m(x, mask))[self.key]

    ids = torch.randint(0, 100, (2, 7))
    bert = tf.BertModel(tf.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=64, max_position_embeddings=64)).eval()
    yield "bert", Wrap(bert), (ids, torch.ones_like(ids)), ["input_ids", "attention_mask"], \
        {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
    gpt2 = tf.GPT2Model(tf.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64)).eval()
    yield "gpt2", Wrap(gpt2), (ids,), ["input_ids"], {"input_ids": {0: "batch", 1: "seq"}}
    t5 = tf.T5Model(tf.T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                                num_heads=4)).eval()

    class T5(torch.nn.Module):
        def __init__(self, m: torch.nn.Module):
            super().__init__()
            self.m = m

        def forward(self, input_ids, decoder_input_ids):  # type: ignore[no-untyped-def]
            return self.m(input_ids=input_ids, decoder_input_ids=decoder_input_ids).last_hidden_state

    yield "t5", T5(t5), (ids, ids[:, :5]), ["input_ids", "decoder_input_ids"], \
        {"input_ids": {0: "batch", 1: "seq"}, "decoder_input_ids": {0: "batch", 1: "dseq"}}
    vit = tf.ViTModel(tf.ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=4, intermediate_size=64)).eval()
    yield "vit", Wrap(vit), (torch.randn(2, 3, 32, 32),), ["pixel_values"], {"pixel_values": {0: "batch"}}
    try:
        import timm

        tvit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                                 num_classes=10, depth=2).eval()
        yield "timm_vit", tvit, (torch.randn(2, 3, 32, 32),), ["x"], {"x": {0: "batch"}}
    except Exception:  # noqa: BLE001 - timm is optional
        traceback.print_exc()
    img = (torch.randn(2, 3, 64, 64),)
    for name in ("resnet18", "mobilenet_v3_small", "squeezenet1_1", "shufflenet_v2_x0_5"):
        m = getattr(torchvision.models, name)(weights=None, num_classes=10).eval()
        yield name, m, img, ["x"], {"x": {0: "batch"}}

    class LSTMEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(100, 16)
            self.lstm = torch.nn.LSTM(16, 24, num_layers=2, batch_first=True)
            self.head = torch.nn.Linear(24, 5)

        def forward(self, ids):  # type: ignore[no-untyped-def]
            out, _ = self.lstm(self.emb(ids))
            return self.head(out[:, -1])

    yield "lstm_encoder", LSTMEncoder().eval(), (ids,), ["ids"], {"ids": {0: "batch"}}


def export(out: Path) -> dict[str, object]:
    import torch

    report: dict[str, object] = {"torch": torch.__version__}
    for name, m, args, in_names, dyn in models():
        for exporter in ("dynamo", "torchscript"):
            path = out / f"{name}.{exporter}.onnx"
            try:
                with torch.no_grad():
                    if exporter == "dynamo":
                        shapes = tuple({ax: torch.export.Dim.AUTO for ax in dyn.get(n, {})} for n in in_names)
                        torch.onnx.export(m, args, str(path), dynamo=True, input_names=in_names,
                                          dynamic_shapes=shapes, external_data=True)
                    else:
                        torch.onnx.export(m, args, str(path), dynamo=False, input_names=in_names,
                                          output_names=["output"], dynamic_axes=dyn, opset_version=17)
                report[path.name] = {"ok": True, "stripped": strip_weights(path)}
            except Exception as e:  # noqa: BLE001 - record every exporter failure and go on
                report[path.name] = {"ok": False, "error": f"{type(e).__name__}: {str(e)[:500]}"}
            print(path.name, "ok" if report[path.name]["ok"] else report[path.name]["error"], flush=True)  # type: ignore[index]
    return report


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    (out / "export_report.json").write_text(json.dumps(export(out), indent=1))

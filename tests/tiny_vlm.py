"""A tiny random LLaVA (13 M params) for tests of the image request path, built once into the persona-factory
cache from the embedded model's tokenizer; its answers are noise by design. The build runs in a fresh interpreter
(`python tests/tiny_vlm.py TOKENIZER_DIR OUT`) so transformers stays out of the test process."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from persona_factory.teacher.prepare import (
    build_once, cache_dir, embedded_model_dir, prepared, require_torchvision, run_step,
)

TINY_VLM_NAME = "tiny-llava"


def prepare_tiny_vlm() -> Path:
    """A tiny random LLaVA (13 M params) for tests of the image request path; its answers are noise by design."""
    dest = cache_dir() / "models" / TINY_VLM_NAME
    if prepared(dest):
        return dest
    tokenizer_dir = embedded_model_dir()
    require_torchvision()

    def build(tmp: Path) -> None:
        print("[tests] building the tiny random LLaVA (~10 s)", flush=True)
        run_step([sys.executable, __file__, str(tokenizer_dir), str(tmp)], "tiny VLM build")

    build_once(dest, build)
    print(f"[tests] tiny VLM ready: {dest}", flush=True)
    return dest


_CHATML_WITH_IMAGES = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] in ('image', 'image_url') %}<image>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _build_tiny_vlm(tokenizer_dir: Path, out: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import (AutoTokenizer, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tok.chat_template = _CHATML_WITH_IMAGES
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=112, patch_size=14, projection_dim=32)
    # head_dim 64: the CPU attention kernel rejects small head sizes such as 16
    text = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=64, max_position_embeddings=2048,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids("<image>"),
                         vision_feature_select_strategy="default", vision_feature_layer=-1, image_seq_length=64)
    model = LlavaForConditionalGeneration(config).to(torch.float32).eval()
    model.save_pretrained(out)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 112}, crop_size={"height": 112, "width": 112})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=14,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=_CHATML_WITH_IMAGES)
    processor.save_pretrained(out)  # writes the tokenizer (with <image>) too
    # transformers 5.19 writes the CLIP tower as vision_tower.embeddings...; vLLM 0.32 loads
    # vision_tower.vision_model.embeddings...
    weights = out / "model.safetensors"
    tensors = load_file(weights)
    renamed = {re.sub(r"vision_tower\.(?!vision_model\.)", "vision_tower.vision_model.", k): v
               for k, v in tensors.items()}
    save_file(renamed, weights, metadata={"format": "pt"})


if __name__ == "__main__":
    _build_tiny_vlm(Path(sys.argv[1]), Path(sys.argv[2]))

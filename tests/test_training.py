"""The training code: the dataset renders real emoji, each stage's loss falls on a fixed batch,
checkpoints resume, and the evaluation metrics give known answers. No full training runs here."""

from __future__ import annotations

import json
import re
import types
from pathlib import Path

import emoji
import numpy as np
import pytest
import torch
from diffusers import AutoencoderTiny, StableDiffusionPipeline, UNet2DConditionModel
from typer.testing import CliRunner

from livegen.cli import app
from livegen.models.concepts import Concepts
from livegen.models.embedded import EMBEDDED_MODEL, pipeline_components, reads_real_tokens
from livegen.safety.moderation import minilm_embedder
from livegen.training import adversarial, autoencoder, classifier, distill, evaluate, loop, reading, recall, teacher
from livegen.training.classifier import EmojiClassifier, augment
from livegen.training.dataset import EmojiDataset, build, cldr_annotations, describe, enrich, render
from livegen.training.evaluate import PARAPHRASES, kid, retrieval_accuracy
from livegen.training.recipe import PLAIN_PROMPT_SHARE, SHARPEN, STUDENT, AutoencoderRecipe, UNetRecipe
from livegen.training.text import READING, CaptionEmbeddings

TINY_UNET = UNetRecipe(
    block_out_channels=(32, 64),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=8,
    text_pool_heads=2,
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> EmojiDataset:
    workdir = tmp_path_factory.mktemp("emoji")
    build(workdir, progress=False)
    return EmojiDataset.load(workdir)


def test_render_draws_the_colour_glyph_centred_on_white():
    image = np.asarray(render("🍎", 64))
    assert image.shape == (64, 64, 3)
    assert (image[0, 0] == 255).all() and (image[-1, -1] == 255).all()  # plain background
    centre = image[24:40, 24:40].reshape(-1, 3).astype(int)
    assert (centre[:, 0] - centre[:, 1]).mean() > 80  # a red apple, in colour


def test_render_refuses_a_sequence_the_font_has_no_single_glyph_for():
    assert render("🐱\u200d🚀", 64) is None  # cat + ZWJ + rocket: drawn as two glyphs


def test_captions_name_skin_tone_hair_and_flags():
    thumbs = describe("👍🏿", emoji.EMOJI_DATA["👍🏿"])
    assert "thumbs up with dark skin tone" in thumbs.captions
    red_hair = describe("👨‍🦰", emoji.EMOJI_DATA["👨‍🦰"])
    assert any("man with red hair" in c for c in red_hair.captions)
    japan = describe("🇯🇵", emoji.EMOJI_DATA["🇯🇵"])
    assert "flag of Japan" in japan.captions[0] and "Japan flag" in japan.captions


def test_extra_captions_say_what_people_type_from_cldr_keywords_and_word_variations():
    annotations = cldr_annotations()
    bee = enrich(describe("🐝", emoji.EMOJI_DATA["🐝"]), annotations["🐝"])
    assert bee.name == "honeybee" and "insect" in bee.extra and "a bee" in bee.extra
    house = enrich(describe("🏠", emoji.EMOJI_DATA["🏠"]), annotations["🏠"])
    assert "home" in house.extra and any(e.endswith("houses") for e in house.extra)
    assert not set(house.extra) & set(house.captions) and house.training_captions[: len(house.captions)] == house.captions
    assert enrich(describe("🏠", emoji.EMOJI_DATA["🏠"]), annotations["🏠"]) == house  # the same on every build
    dark = enrich(describe("👍🏿", emoji.EMOJI_DATA["👍🏿"]), annotations["👍🏿"])
    assert "thumbs up" in dark.extra and not any(e.endswith("skin tone") and "thumb" not in e for e in dark.extra)


def test_caption_embeddings_condition_each_image_one_way_with_its_empty_prompt():
    real, padded = torch.randn(6, 4, 3), torch.randn(6, 4, 3)
    captions = CaptionEmbeddings(real.half(), padded.half(), torch.tensor([0, 0, 1, 1, 2, 2]),
                                 torch.full((4, 3), 1.0).half(), torch.full((4, 3), 2.0).half())
    images = torch.tensor([0, 1, 2] * 20)
    for share, source, empty_value in ((0.0, real, 1.0), (1.0, padded, 2.0)):
        text, empty = captions.sample(images, torch.Generator().manual_seed(0), share)
        assert all(any(torch.equal(row, s.half().float()) for s in source) for row in text)
        assert (empty == empty_value).all()
    text, empty = captions.sample(images, torch.Generator().manual_seed(0), 0.5)
    padded_rows = (empty == 2.0).all(dim=(1, 2))
    assert 0 < padded_rows.sum() < len(images)
    assert all(any(torch.equal(row, s.half().float()) for s in padded) for row in text[padded_rows])


def test_dataset_builder_renders_every_emoji_with_its_captions(dataset):
    assert len(dataset) > 3000
    assert dataset.images.shape[1:] == (64, 64, 3) and dataset.images.dtype == np.uint8
    cat = dataset.index_of("🐱")
    assert "cat face" in dataset.records[cat].captions
    assert not np.array_equal(dataset.images[cat], dataset.images[dataset.index_of("🐶")])
    pixels = dataset.images.reshape(len(dataset), -1)
    assert (pixels.min(axis=1) < 200).all()  # no blank render


def test_identical_renders_are_grouped(dataset):
    twins = dataset.same_picture()
    norway = dataset.index_of("🇳🇴")
    assert dataset.index_of("🇧🇻") in twins[norway] and twins[norway] == twins[dataset.index_of("🇧🇻")]
    assert twins[dataset.index_of("🐱")] == (dataset.index_of("🐱"),)


def test_every_paraphrase_names_emoji_in_the_dataset(dataset):
    paraphrases = json.loads(PARAPHRASES.read_text())
    captions = {c for record in dataset.records for c in record.captions}
    assert len(paraphrases) >= 100
    for item in paraphrases:
        assert item["prompt"] not in captions
        for char in item["emoji"]:
            dataset.index_of(char)


def fixed_batch_improves(loss_fn, parameters, lr: float = 1e-3) -> tuple[float, float]:
    """Loss on a fixed batch (same noise, same timesteps) before and after one optimiser step."""
    optimizer = torch.optim.Adam(parameters, lr=lr)
    before = loss_fn(torch.Generator().manual_seed(0))
    optimizer.zero_grad()
    before.backward()
    optimizer.step()
    with torch.no_grad():
        after = loss_fn(torch.Generator().manual_seed(0))
    return before.item(), after.item()


def test_reconstruction_psnr_known_answer():
    images = torch.rand(4, 3, 8, 8) * 1.6 - 0.8
    shifted = types.SimpleNamespace(decoder=lambda latents: latents + 0.2)  # 0.1 on the [0, 1] scale
    assert autoencoder.reconstruction_psnr(shifted, images, images) == pytest.approx(20.0, abs=1e-3)


def test_one_autoencoder_step_lowers_its_loss(dataset):
    recipe = AutoencoderRecipe(channels=8)
    vae = autoencoder.build(recipe)
    images = dataset.tensor()[:8]
    before, after = fixed_batch_improves(lambda g: autoencoder.losses(vae, images, g, recipe)[0], vae.parameters())
    assert after < before


def test_a_trained_autoencoder_is_adopted_for_both_stages(dataset, tmp_path):
    EmojiDataset(dataset.images[:16], dataset.records[:16]).save(tmp_path)
    result = CliRunner().invoke(app, ["train", "adopt-autoencoder", str(EMBEDDED_MODEL / "vae"), "--workdir",
                                      str(tmp_path), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    shipped = AutoencoderTiny.from_pretrained(EMBEDDED_MODEL / "vae").float()
    for stage in ("autoencoder", "decoder"):
        adopted = autoencoder.load(tmp_path, stage)
        assert all(torch.equal(a, b) for a, b in zip(shipped.parameters(), adopted.parameters()))
        assert adopted.config.scaling_factor == shipped.config.scaling_factor
    assert torch.load(tmp_path / "latents.pt").shape == (16, 8, 8, 8)


def test_train_commands_run_every_shipped_stage_and_export_a_pipeline_diffusers_runs(dataset, tmp_path):
    EmojiDataset(dataset.images[:16], dataset.records[:16]).save(tmp_path)
    for stage in ("autoencoder", "decoder"):
        result = CliRunner().invoke(app, ["train", stage, "--workdir", str(tmp_path), "--steps", "2", "--device", "cpu"])
        assert result.exit_code == 0, result.output
        assert re.search(rf"{stage}: reconstruction PSNR \d+\.\d dB", result.output)
        assert (tmp_path / stage / "model" / "config.json").is_file()
    assert torch.load(tmp_path / "latents.pt").shape == (16, 8, 8, 8)

    for stage in ("teacher", "student", "sharpen", "recall"):
        result = CliRunner().invoke(app, ["train", stage, "--workdir", str(tmp_path), "--steps", "1", "--device", "cpu"])
        assert result.exit_code == 0, result.output
        assert (tmp_path / stage / "checkpoint.pt").is_file()
    shipped = {f: f.stat().st_mtime_ns for f in EMBEDDED_MODEL.rglob("*") if f.is_file()}
    result = CliRunner().invoke(app, ["train", "export", "--workdir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    output = tmp_path / "export"  # a build goes to the work folder unless told where
    assert (output / "model_index.json").is_file() and (tmp_path / "teacher" / "pipeline" / "model_index.json").is_file()
    assert {f: f.stat().st_mtime_ns for f in EMBEDDED_MODEL.rglob("*") if f.is_file()} == shipped
    elsewhere = tmp_path / "elsewhere"
    result = CliRunner().invoke(app, ["train", "export", "--workdir", str(tmp_path), "--to", str(elsewhere)])
    assert result.exit_code == 0 and (elsewhere / "unet" / "config.json").is_file(), result.output
    recalled = UNet2DConditionModel.from_pretrained(tmp_path / "recall" / "unet")  # the last stage
    exported = UNet2DConditionModel.from_pretrained(output / "unet")
    assert all(torch.equal(a.half(), b) for a, b in zip(recalled.parameters(), exported.parameters()))
    assert reads_real_tokens(output)
    for folder in (output, tmp_path / "teacher" / "pipeline"):  # both draw a prompt as its nearest emoji's name
        concepts = Concepts.read(folder)
        assert concepts.phrases == tuple(r.training_captions for r in dataset.records[:16])
        name = dataset.records[3].captions[0]
        assert concepts.drawn_text(name, minilm_embedder()) == name
    pipe = StableDiffusionPipeline.from_pretrained(output, **pipeline_components(output))
    image = pipe("a cat", num_inference_steps=1, output_type="np").images[0]
    assert image.shape == (64, 64, 3) and np.isfinite(image).all()


def test_adapt_fine_tunes_a_trained_student_and_export_writes_it(dataset, tmp_path):
    EmojiDataset(dataset.images[:16], dataset.records[:16]).save(tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["train", "adopt-autoencoder", str(EMBEDDED_MODEL / "vae"), "--workdir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    torch.save({"real": torch.zeros(1)}, tmp_path / "text.pt")  # embeddings of an older reading: made again
    result = runner.invoke(app, ["train", "adapt", str(EMBEDDED_MODEL), "--workdir", str(tmp_path), "--steps", "1",
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert torch.load(tmp_path / "text.pt")["reading"] == READING
    shipped = UNet2DConditionModel.from_pretrained(EMBEDDED_MODEL / "unet").float()
    adapted = UNet2DConditionModel.from_pretrained(tmp_path / "adapt" / "unet")
    moved = {name: (a - b).abs().max().item()
             for (name, a), b in zip(shipped.named_parameters(), adapted.parameters())}  # fmt: skip
    assert all(0 < change < 1e-2 for name, change in moved.items() if reading.reads_prompt(name))  # one small step
    assert not any(change for name, change in moved.items() if not reading.reads_prompt(name))  # what draws: untouched
    result = runner.invoke(app, ["train", "export", "--workdir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    exported = UNet2DConditionModel.from_pretrained(tmp_path / "export" / "unet")
    assert all(torch.equal(a.half(), b) for a, b in zip(adapted.parameters(), exported.parameters()))
    assert reads_real_tokens(tmp_path / "export") and not (tmp_path / "teacher").exists()


def test_recall_sharpens_a_trained_student_on_the_names_and_export_writes_it(dataset, tmp_path):
    EmojiDataset(dataset.images[:16], dataset.records[:16]).save(tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["train", "adopt-autoencoder", str(EMBEDDED_MODEL / "vae"), "--workdir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["train", "recall", "--from", str(EMBEDDED_MODEL), "--workdir", str(tmp_path),
                                 "--steps", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    shipped = UNet2DConditionModel.from_pretrained(EMBEDDED_MODEL / "unet").float()
    recalled = UNet2DConditionModel.from_pretrained(tmp_path / "recall" / "unet")
    assert any(not torch.equal(a, b) for a, b in zip(shipped.parameters(), recalled.parameters()))
    result = runner.invoke(app, ["train", "export", "--workdir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    exported = UNet2DConditionModel.from_pretrained(tmp_path / "export" / "unet")
    assert all(torch.equal(a.half(), b) for a, b in zip(recalled.parameters(), exported.parameters()))


def test_recall_conditions_on_the_name_by_its_real_tokens_or_any_caption_padded():
    owner = torch.tensor([0, 0, 0, 1, 1])  # image 0 has captions 0-2 (its name first), image 1 has 3-4
    real, padded = torch.arange(5.0).view(5, 1, 1), 10 + torch.arange(5.0).view(5, 1, 1)
    captions = CaptionEmbeddings(real, padded, owner, torch.zeros(1), torch.zeros(1))
    images = torch.tensor([0, 1] * 500)
    text = recall.names(captions, images, torch.Generator().manual_seed(0)).flatten()
    names = torch.where(images == 0, 0.0, 3.0)
    read_padded = text >= 10
    assert torch.equal(text[~read_padded], names[~read_padded])
    assert abs(read_padded.float().mean().item() - PLAIN_PROMPT_SHARE) < 0.05
    assert set((text[read_padded & (images == 0)] - 10).tolist()) == {0.0, 1.0, 2.0}  # any caption of its own


def test_eval_measures_the_shipped_model_in_a_work_folder_without_a_build(dataset, tmp_path, monkeypatch):
    """`make eval` without `make model`: no autoencoder, teacher or export in the work folder. The
    classifier (1 step here) learns the round trips through the shipped model's own autoencoder;
    the teacher rows are left out; results and grid land in the work folder, not in docs/.
    Kept short: 64 emoji, 24 of their captions as prompts, no paraphrases."""
    no_paraphrases = tmp_path / "paraphrases.json"
    no_paraphrases.write_text("[]")
    all_prompts = evaluate.eval_prompts
    monkeypatch.setattr(evaluate, "eval_prompts", lambda data: all_prompts(data, no_paraphrases, 24))
    natural = tmp_path / "natural.json"  # one prompt a caption equals, one no caption does
    natural.write_text(json.dumps([{"prompt": dataset.records[0].captions[0], "emoji": [dataset.records[0].char]},
                                   {"prompt": "qzx nobody typed this", "emoji": [dataset.records[1].char]}]))
    monkeypatch.setattr(evaluate, "NATURAL", natural)
    EmojiDataset(dataset.images[:64], dataset.records[:64]).save(tmp_path)
    classifier.train(tmp_path, steps=1, device="cpu", progress=False, vae_folder=EMBEDDED_MODEL / "vae")
    docs_grid = Path(__file__).resolve().parent.parent / "docs" / "model-grid.png"
    before = docs_grid.stat().st_mtime_ns if docs_grid.exists() else None
    result = CliRunner().invoke(app, ["eval", "--workdir", str(tmp_path), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "eval.json").read_text())
    assert [(r["model"], r["steps"]) for r in rows] == [("real images", None), ("uniform noise", None),
                                                         (evaluate.TEXT_ONLY, None), (evaluate.CONCEPT_ONLY, None),
                                                         ("student", 1), ("student", 2), ("student", 4),
                                                         ("student, prompt as typed", 1),  # it has a concept index
                                                         ("student, pipe(prompt)", 1)]  # it reads real tokens
    assert rows[0]["top1"] == rows[0]["natural_top1"] == rows[0]["natural_unseen_top1"] == 1.0
    assert all(0 <= r[k] <= 1 for r in rows for k in ("top1", "natural_top1", "natural_unseen_top1"))
    text_only = rows[2]  # a prompt that is a training caption finds that caption: its emoji
    assert text_only["kid"] is None and text_only["natural_top1"] >= 0.5 and text_only["top1"] >= 0.9
    assert rows[3]["kid"] is None and rows[3]["natural_top1"] >= 0.5  # the index finds that caption's emoji too
    assert rows[0]["natural_pixel_top1"] == 1.0  # a real emoji is nearest its own round trip
    assert rows[1]["natural_pixel_top1"] <= 0.5 and rows[2]["natural_pixel_top1"] is rows[3]["natural_pixel_top1"] is None
    assert (tmp_path / "model-grid.png").is_file()
    assert (docs_grid.stat().st_mtime_ns if docs_grid.exists() else None) == before


def tiny_unet(**extra) -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(**{**TINY_UNET.config(), "sample_size": 4, **extra})


def test_one_teacher_step_lowers_the_diffusion_loss():
    unet = tiny_unet()
    latents = torch.randn(8, 8, 4, 4)
    text = torch.randn(8, 6, 384)
    schedule = teacher.noise_schedule()
    before, after = fixed_batch_improves(
        lambda g: teacher.diffusion_loss(unet, schedule, latents, text, g), unet.parameters()
    )
    assert after < before


def test_one_distillation_step_lowers_the_consistency_loss():
    teacher_unet = tiny_unet().requires_grad_(False)
    student = distill.student_from(teacher_unet)
    target = distill.student_from(teacher_unet).requires_grad_(False)
    solver = distill.Solver(teacher.noise_schedule().alphas_cumprod, STUDENT.solver_steps)
    latents, text, empty = torch.randn(8, 8, 4, 4), torch.randn(8, 6, 384), torch.zeros(8, 6, 384)
    before, after = fixed_batch_improves(
        lambda g: distill.consistency_loss(student, target, teacher_unet, solver, latents, text, empty, g),
        student.parameters(),
        lr=1e-5,
    )
    assert after < before


def test_one_adapt_step_lowers_the_reading_loss_and_the_padded_reading_starts_on_target():
    frozen = distill.student_from(tiny_unet()).requires_grad_(False)
    student = distill.student_from(tiny_unet())
    solver = distill.Solver(teacher.noise_schedule().alphas_cumprod, STUDENT.solver_steps)
    latents, padded, read = torch.randn(8, 8, 4, 4), torch.randn(8, 6, 384), torch.randn(8, 6, 384)
    same = reading.reading_loss(student, frozen, solver, latents, padded, padded, torch.Generator().manual_seed(0), 0.5)
    assert same.item() == 0  # the student starts as its frozen copy: the padded reading is already right
    trained = [p for name, p in student.named_parameters() if reading.reads_prompt(name)]
    before, after = fixed_batch_improves(
        lambda g: reading.reading_loss(student, frozen, solver, latents, read, padded, g, 0.5), trained, lr=1e-3
    )
    assert after < before


def test_one_distillation_step_lowers_the_one_step_loss():
    student = distill.student_from(tiny_unet())
    solver = distill.Solver(teacher.noise_schedule().alphas_cumprod, STUDENT.solver_steps)
    latents, text = torch.randn(8, 8, 4, 4), torch.randn(8, 6, 384)
    before, after = fixed_batch_improves(
        lambda g: distill.one_step_loss(student, solver, latents, text, g), student.parameters(), lr=1e-4
    )
    assert after < before


def test_sharpening_trains_the_one_step_timestep_and_the_later_sampler_timesteps():
    t = adversarial.sampled_timesteps(4000, SHARPEN.one_step_share, torch.Generator().manual_seed(0))
    assert set(t.tolist()) == {999, 749, 499, 249}  # 1 step: 999; 2: 999, 499; 4: 999, 749, 499, 249
    assert (t == 999).float().mean().item() == pytest.approx(SHARPEN.one_step_share, abs=0.03)


def test_the_student_is_sharpened_on_pure_noise_at_the_top_and_noised_latents_below():
    solver = distill.Solver(teacher.noise_schedule().alphas_cumprod, STUDENT.solver_steps)
    real, t = torch.randn(2, 8, 4, 4), torch.tensor([999, 249])
    start = adversarial.student_input(real, t, solver, torch.Generator().manual_seed(0))
    noise = torch.randn(real.shape, generator=torch.Generator().manual_seed(0))
    assert torch.equal(start[0], noise[0])
    assert torch.allclose(start[1], solver.alpha[249] * real[1] + solver.sigma[249] * noise[1])


def test_one_discriminator_step_lowers_its_hinge_loss():
    torch.manual_seed(0)
    discriminator = adversarial.Discriminator(text_dim=384, width=8)
    real = torch.rand(8, 3, 32, 32) * 2 - 1
    soft = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(real, 4), scale_factor=4)
    text = torch.randn(8, 6, 384)
    before, after = fixed_batch_improves(
        lambda g: adversarial.discriminator_loss(discriminator, real, soft, text), discriminator.parameters()
    )
    assert after < before


def test_one_sharpening_step_raises_the_discriminators_score_of_the_students_pictures():
    student = distill.student_from(tiny_unet())
    vae = autoencoder.build(AutoencoderRecipe(channels=8)).requires_grad_(False)
    torch.manual_seed(0)
    discriminator = adversarial.Discriminator(text_dim=384, width=8).requires_grad_(False)
    solver = distill.Solver(teacher.noise_schedule().alphas_cumprod, STUDENT.solver_steps)
    latents, text = torch.randn(8, 8, 4, 4), torch.randn(8, 6, 384)

    def adversarial_loss(g):
        fake = adversarial.student_sample(student, solver, latents, text, g)
        return -discriminator(adversarial.decode(vae, fake), text).mean()

    before, after = fixed_batch_improves(adversarial_loss, student.parameters(), lr=1e-4)
    assert after < before


def test_student_starts_as_the_teacher():
    teacher_unet = tiny_unet().eval()
    student = distill.student_from(teacher_unet).eval()
    sample, t, text = torch.randn(2, 8, 4, 4), torch.tensor([999, 500]), torch.randn(2, 6, 384)
    w = distill.guidance_embedding(torch.tensor([0.0, 2.0]), 256)
    with torch.no_grad():
        assert torch.allclose(teacher_unet(sample, t, text).sample, student(sample, t, text, timestep_cond=w).sample)


def test_guidance_embedding_matches_the_pipeline():
    w = torch.tensor([0.0, 1.0, 2.5])
    expected = StableDiffusionPipeline.get_guidance_scale_embedding(None, w, embedding_dim=256)
    assert torch.allclose(distill.guidance_embedding(w, 256), expected, atol=1e-3)


def test_boundary_scalings_match_the_scheduler():
    scheduler = distill.sampler()
    for t in (0, 19, 499, 999):
        c_skip, c_out = distill.boundary_scalings(torch.tensor([t]))
        expected = scheduler.get_scalings_for_boundary_condition_discrete(t)
        assert c_skip.item() == pytest.approx(expected[0]) and c_out.item() == pytest.approx(expected[1])


def test_student_sampler_timesteps_lie_on_the_distillation_grid():
    scheduler = distill.sampler()
    grid = set(distill.Solver(teacher.noise_schedule().alphas_cumprod, STUDENT.solver_steps).timesteps.tolist())
    for steps in (1, 2, 4):
        scheduler.set_timesteps(steps)
        assert set(scheduler.timesteps.tolist()) <= grid


def test_training_resumes_from_its_checkpoint_with_the_same_batches(tmp_path):
    def make():
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)
        return model, torch.optim.SGD(model.parameters(), lr=0.1)

    def step_fn(model, optimizer):
        def train_step(step, generator):
            x = torch.randn(16, 4, generator=generator)
            loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            return {"loss": loss.item()}

        return train_step

    straight, opt = make()
    loop.run(loop.Stage(tmp_path / "a"), 10, step_fn(straight, opt), {"model": straight, "optimizer": opt}, 1,
             progress=False)  # fmt: skip
    resumed, opt = make()
    loop.run(loop.Stage(tmp_path / "b"), 4, step_fn(resumed, opt), {"model": resumed, "optimizer": opt}, 1,
             save_every=2, progress=False)  # fmt: skip
    resumed, opt = make()  # a new process: everything comes back from the checkpoint
    done = loop.run(loop.Stage(tmp_path / "b"), 10, step_fn(resumed, opt), {"model": resumed, "optimizer": opt}, 1,
                    progress=False)  # fmt: skip
    assert done == 6
    assert torch.equal(straight.weight, resumed.weight)
    assert len((tmp_path / "b" / "log.jsonl").read_text().splitlines()) == 2  # steps 4 and 10


def pixel_features(images: torch.Tensor) -> torch.Tensor:
    """A feature space that needs no training: 8x8 average-pooled pixels."""
    return torch.nn.functional.adaptive_avg_pool2d(images, 8).flatten(1)


def test_metrics_score_real_images_near_perfect_and_noise_near_zero(dataset):
    images = dataset.tensor()[:400]
    real = pixel_features(images)
    targets = dataset.same_picture()[:400]  # a few flags share one glyph
    assert retrieval_accuracy(real, real, targets) == (1.0, 1.0)
    moved = pixel_features(augment(images, torch.Generator().manual_seed(1)))
    top1, top5 = retrieval_accuracy(moved, real, targets)
    assert top5 >= top1 > 0.3
    noise = pixel_features(torch.rand(images.shape, generator=torch.Generator().manual_seed(2)) * 2 - 1)
    top1, top5 = retrieval_accuracy(noise, real, targets)
    assert top1 < 0.02 and top5 < 0.05
    same = kid(real[:200], real[200:])
    different = kid(noise, real)
    assert abs(same) < 0.05 * different


def test_one_classifier_step_lowers_its_loss(dataset):
    torch.manual_seed(0)
    model = EmojiClassifier(len(dataset), feature_dim=32)
    images, labels = dataset.tensor()[:16], torch.arange(16)
    before, after = fixed_batch_improves(
        lambda g: torch.nn.functional.cross_entropy(model(images), labels), model.parameters()
    )
    assert after < before
    assert model.eval().embed(images).shape == (16, 32)


def test_the_pixel_judge_names_the_nearest_gallery_image():
    gallery = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    near = gallery + 0.01 * torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    assert evaluate.pixel_nearest(near, gallery, [(i,) for i in range(5)]) == 1.0
    assert evaluate.pixel_nearest(near, gallery, [((i + 1) % 5, (i + 2) % 5) for i in range(5)]) == 0.0


def test_kid_is_unbiased_near_zero_for_one_distribution_and_grows_with_the_gap():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(500, 64, generator=generator), torch.randn(500, 64, generator=generator)
    assert abs(kid(a, b)) < 0.01
    assert kid(a + 0.5, b) > kid(a + 0.2, b) > 0.02

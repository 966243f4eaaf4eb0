"""The pieces of CoD annotation without a server: reply parsing, source records, images, retry policy."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sicog.annotate.api import NO_KEY, FatalAPIError, RetryPolicy, redact, resolve_endpoint
from sicog.annotate.cod import (
    ASSISTANT_PREFILL,
    SYSTEM_PROMPT,
    CodSource,
    ReplyError,
    build_messages,
    cod_record,
    dd_record,
    parse_cod_reply,
    read_source,
)
from sicog.annotate.images import ImageLoadError, image_data_url
from sicog.data.jsonl import RecordError
from sicog.data.prompts import COD_STEPS, COT_STEPS
from sicog.data.schema import ImageOutsideFolder, resolve_image
from sicog.data.steps import format_steps, split_steps
from sicog.model.image_io import load_image

BODIES = ["A dog on grass.", "The dog is brown, short-haired.", "The dog is left of a ball.",
          "A fence at the back.", "A brown dog stands on grass left of a red ball, a fence behind."]


def test_canonical_reply_round_trips():
    bodies, caption = parse_cod_reply(format_steps(COD_STEPS, BODIES))
    assert bodies == BODIES and caption == format_steps(COD_STEPS, BODIES)


def test_decorated_reply_parses_to_the_canonical_caption():
    reply = "Sure, here it is:\n\n" + "\n\n".join(
        f"**Step {i}: {header}**\n{body}" for i, (header, body) in enumerate(zip(COD_STEPS, BODIES), start=1))
    bodies, caption = parse_cod_reply(reply)
    assert bodies == BODIES
    assert split_steps(caption, COD_STEPS) == dict(enumerate(BODIES, start=1))


def published_reply(bodies: list[str], headers=COD_STEPS) -> str:
    """A reply laid out as the published prompt's example: "**Step N**: header", a blank line, the text."""
    return "\n\n".join(f"**Step {i}**: {h}\n\n{b}" for i, (h, b) in enumerate(zip(headers, bodies), start=1))


@pytest.mark.parametrize("body", ["The banner reads *Grand Opening*", "A sign reading **STOP**",
                                  "*Grand Opening* is written on it", "**Note:** a sign\n- *red*\n- **big**"])
def test_markdown_emphasis_in_a_reply_is_kept_as_written(body):
    for reply in (published_reply([body, *BODIES[1:4], body]),
                  "\n".join(f"**Step {i}:** {b}" for i, b in enumerate([body, *BODIES[1:4], body], start=1))):
        bodies, caption = parse_cod_reply(reply)
        assert bodies[0] == bodies[4] == body
        assert split_steps(caption, COD_STEPS)[5] == body


def test_a_first_line_ending_in_a_colon_is_body_text_when_the_header_is_left_out():
    first = "The shelf holds three items:\n- a red mug\n- a blue jar\n- a book"
    reply = "\n\n".join(f"**Step {i}**: {b}" for i, b in enumerate([first, *BODIES[1:4], first], start=1))
    bodies, _ = parse_cod_reply(reply)
    assert bodies[0] == bodies[4] == first


@pytest.mark.parametrize("marker", ["### Step {i}: Salient Content", "**Step {i}: Salient Content**",
                                    "Step {i}: **Salient Content**", "**Step {i}**\n## Salient Content",
                                    "**Step {i}: Salient Content**:", "__Step {i}: Salient Content__"])
def test_a_shortened_header_styled_as_a_heading_is_not_kept_in_the_body(marker):
    """The last two left "Salient Content**:" and "Salient Content__" in every step of the written captions."""
    reply = "\n\n".join(f"{marker.format(i=i)}\n\n{b}" for i, b in enumerate(BODIES, start=1))
    bodies, _ = parse_cod_reply(reply)
    assert bodies == BODIES


@pytest.mark.parametrize("marker", ["**Step {i}: Salient Content** ", "**Step {i}: Salient Content**: ",
                                    "__Step {i}: Salient Content__ - "])
def test_a_shortened_bold_header_with_the_text_on_its_line_is_not_kept_in_the_body(marker):
    reply = "\n\n".join(f"{marker.format(i=i)}{b}" for i, b in enumerate(BODIES, start=1))
    bodies, _ = parse_cod_reply(reply)
    assert bodies == BODIES


def test_a_horizontal_rule_ends_a_step_and_a_closing_remark_after_one_is_no_part_of_the_caption():
    """The published prompt separates its example's steps with "---": replies that copy it stored the rule at the end of
    steps 1-4, and a remark after the last one ("This description is based strictly on ...") in the caption."""
    steps = [f"**Step {i}**: {h}\n\n{b}" for i, (h, b) in enumerate(zip(COD_STEPS, BODIES), start=1)]
    reply = "\n\n---\n\n".join(steps) + "\n\n* * *\n\nThis description is based strictly on the image."
    bodies, caption = parse_cod_reply(reply)
    assert bodies == BODIES
    assert split_steps(caption, COD_STEPS) == dict(enumerate(BODIES, start=1))


@pytest.mark.parametrize("marker", ["### Step {i}: {h}\n---\n", "**Step {i}: {h}**\n\n* * *\n\n",
                                    "Step {i}:\n---\n{h}\n"])
def test_a_rule_under_a_step_header_is_dropped_and_the_step_keeps_its_text(marker):
    reply = "\n\n".join(marker.format(i=i, h=h) + b for i, (h, b) in enumerate(zip(COD_STEPS, BODIES), start=1))
    assert parse_cod_reply(reply)[0] == BODIES


@pytest.mark.parametrize("rule", ["---", "***", "___", "- - -"])
def test_a_rule_right_under_a_steps_text_ends_it(rule):
    """As the published prompt's example separates its steps, with no blank line around the rule; a closing remark
    after the last one is no part of the caption."""
    reply = "\n".join(f"**Step {i}**: {h}\n{b}\n{rule}" for i, (h, b) in enumerate(zip(COD_STEPS, BODIES), start=1))
    bodies, caption = parse_cod_reply(reply + "\nI hope this helps!")
    assert bodies == BODIES and "hope" not in caption


@pytest.mark.parametrize(("text", "body"), [
    ("Step 4:\n**The answer is B.**", "**The answer is B.**"),
    ("Step 4:\n---\n**The answer is B.**", "**The answer is B.**"),
    ("### Step 4: The answer is B.", "The answer is B."),
    ("### Step 4: Answer: B", "Answer: B"),
    ("Step 4: **The answer is B.**", "**The answer is B.**"),
    ("**Step 4:** **The answer is B.**", "**The answer is B.**"),
])
def test_a_styled_line_that_reads_as_text_with_a_rule_and_a_remark_after_it_is_the_step(text, body):
    """It was taken for a header, and the closing remark after the rule for the step (and the caption)."""
    for newline in ("\n", "\r\n"):
        reply = (text + "\n\n---\n\nLet me know if you have other questions!").replace("\n", newline)
        assert split_steps(reply, COT_STEPS)[4] == body


@pytest.mark.parametrize("title", ["**Step 4: Conclusion**", "### Step 4: Final answer", "Step 4:\n**Conclusion:**"])
def test_a_title_with_a_rule_under_it_is_the_header(title):
    assert split_steps(f"{title}\n---\nThe answer is B.", COT_STEPS)[4] == "The answer is B."


@pytest.mark.parametrize("separator", ["\u2014", ":", ": ", " - ", "-", ":\r"])
def test_a_separator_after_a_closing_bold_header_is_removed(separator):
    newline = "\r\n" if separator.endswith("\r") else ""
    text = f"**Step 1: Salient Content**{separator.rstrip(chr(13))}{newline}A red bus drives past a lamp post."
    assert split_steps(text, COD_STEPS)[1] == "A red bus drives past a lamp post."


@pytest.mark.parametrize("text", ["-3 degrees on the sign.", ".5 of the plate is empty.", "-x = 4, so x = -4.",
                                  "-$3 is the loss."])
def test_a_sign_or_point_after_a_closing_bold_header_is_the_texts_own(text):
    assert split_steps(f"**Step 1: Salient content** {text}", COD_STEPS)[1] == text
    assert split_steps(f"**Step 1: Salient content**: {text}", COD_STEPS)[1] == text


def test_a_closing_bold_header_before_text_with_bold_of_its_own_is_removed():
    reply = "**Step 1: Salient Content** The image shows a **red** dog.\n**Step 2: Fine-Grained Details** It is big."
    assert split_steps(reply, COD_STEPS) == {1: "The image shows a **red** dog.", 2: "It is big."}


@pytest.mark.parametrize(("text", "body"), [
    # a longer sentence that starts like the header is the step's text, whole
    ("Step 1: Clarify the task objectives: find the colour.", "Clarify the task objectives: find the colour."),
    ("Step 1: Clarify the task objective\nThe question asks for a colour.", "The question asks for a colour."),
    ("Step 1:\n**Salient content**:\nA dog on a mat.", "A dog on a mat."),
    ("Step 1: A dog on a mat.\n\n___\nHope this helps.", "A dog on a mat."),
    ("Step 1: A dog.\n\n--\nIt is brown.", "A dog.\n\n--\nIt is brown."),  # two dashes are no rule
])
def test_header_sentences_bold_lines_and_rules_are_told_from_the_text(text, body):
    assert split_steps(text + "\nStep 2: More.", COT_STEPS)[1] == body


def test_header_forms_of_the_published_reply_are_removed():
    assert parse_cod_reply(published_reply(BODIES))[0] == BODIES
    same_line = "\n".join(f"**Step {i}: {h}** {b}" for i, (h, b) in enumerate(zip(COD_STEPS, BODIES), start=1))
    assert parse_cod_reply(same_line)[0] == BODIES
    # a plain first line that is neither the header nor styled as one is the step's text
    assert split_steps("**Step 1**: Salient content\n\nA dog.", COD_STEPS)[1] == "Salient content\n\nA dog."
    assert split_steps("**Step 1**\n**A dog.**", COD_STEPS)[1] == "**A dog.**"


@pytest.mark.parametrize(("reply", "reason"), [
    ("", "empty reply"),
    ("\u200b\n", "empty reply"),
    ("A brown dog on grass.", "no 'Step N' markers"),
    (format_steps(COD_STEPS[:4], BODIES[:4]), "missing or empty step(s) 5"),
    (format_steps(COD_STEPS, BODIES[:2] + [""] + BODIES[3:]), "missing or empty step(s) 3"),
    (format_steps(COD_STEPS, BODIES[:2] + ["\u200b"] + BODIES[3:]), "missing or empty step(s) 3"),
    (format_steps(COD_STEPS, BODIES) + "\n\nStep 6: Extra.\nMore.", "unexpected step(s) 6"),
    (format_steps(COD_STEPS, BODIES[:1] + ["A dog <image> on grass."] + BODIES[2:]), "<image> in step(s) 2"),
    # A step quoting a recipe's numbered lines: taken as markers, they would cut the real step 3 out.
    (format_steps(COD_STEPS, BODIES[:1] + ["The poster reads:\n- Step 1: Knead.\n- Step 2: Bake."] + BODIES[2:]),
     "step markers 1, 2, 1, 2, 3, 4, 5: not steps 1 to 5 once each in order"),
])
def test_unusable_replies_are_rejected_with_a_reason(reply, reason):
    with pytest.raises(ReplyError, match=re.escape(reason)):
        parse_cod_reply(reply)


def test_truncated_reply_is_rejected_even_when_it_parses():
    with pytest.raises(ReplyError, match="finish_reason=length"):
        parse_cod_reply(format_steps(COD_STEPS, BODIES), finish_reason="length")


def test_system_prompt_names_the_five_steps_in_order():
    positions = [SYSTEM_PROMPT.index(f"**Step {i}**: {header}") for i, header in enumerate(COD_STEPS, start=1)]
    assert positions == sorted(positions)


def llava(question: str = "<image>\nWhat is this?", caption: str = "A dog.", **extra) -> dict:
    return {"id": 7, "image": "x.jpg", "conversations": [{"from": "human", "value": question},
                                                         {"from": "gpt", "value": caption}], **extra}


def test_source_takes_the_bare_question_and_the_caption():
    assert read_source(llava()) == CodSource("7", "x.jpg", "What is this?", "A dog.", "<image>\nWhat is this?")
    assert read_source(llava("<image>")).question == ""


def test_the_training_question_loses_a_short_answer_or_step_by_step_request():
    # A CoD record asking for a single word and answered by five steps would teach the model to ignore the request.
    for instruction in ("Answer the question using a single word or phrase.", "Describe the image step-by-step.",
                        "Answer the question step-by-step."):
        source = read_source(llava(f"<image>\nWhat is the man holding?\n{instruction}"))
        assert source.question == "What is the man holding?"
        assert source.asked == f"<image>\nWhat is the man holding?\n{instruction}"  # quoted whole to the VLM


def test_a_caption_field_is_the_original_description_as_in_the_published_input():
    # generate_cod_caption.py: question = conversations[0].value, caption = data['caption']
    record = {**llava(caption="Red."), "caption": " A red square. "}
    assert read_source(record).caption == "A red square."
    assert build_messages("data:,", read_source(record))[1]["content"][0]["text"] == (
        "Question: <image>\nWhat is this?\n\nOriginal description: A red square.")
    question_only = {"id": 1, "image": "x.jpg", "caption": "A green square.",
                     "conversations": [{"from": "human", "value": "<image>\nDescribe it."}]}
    assert read_source(question_only).caption == "A green square."
    # an empty or missing caption field: the first gpt turn
    assert read_source({**llava(), "caption": "  "}).caption == "A dog."
    assert read_source({**llava(), "caption": None}).caption == "A dog."


@pytest.mark.parametrize(("record", "field"), [
    ({"image": "x.jpg", "conversations": []}, "id"),
    (llava(image=["a.jpg", "b.jpg"]), "image"),
    ({"id": 1, "image": "x.jpg", "conversations": [{"from": "human", "value": "q"}]}, "conversations"),
    ({"id": 1, "image": "x.jpg", "conversations": [{"from": "gpt", "value": "q"}, {"from": "gpt", "value": "c"}]},
     "conversations[0]"),
    (llava(caption="  "), "conversations[1].value"),
    ({**llava(), "caption": 3}, "caption"),
    ({"id": 1, "image": "x.jpg", "caption": "A dog.", "conversations": [{"from": "gpt", "value": "q"}]},
     "conversations[0]"),
    ({"id": 1, "image": "x.jpg", "caption": "", "conversations": [{"from": "human", "value": "q"}]},
     "conversations"),
])
def test_bad_source_records_name_file_line_and_field(record, field):
    with pytest.raises(RecordError) as info:
        read_source(record, path="in.jsonl", line=3)
    assert info.value.field == field and info.value.path == "in.jsonl" and info.value.line == 3


def test_output_records_keep_other_fields_and_do_not_touch_the_input():
    record = llava(source="vflan")
    snapshot = repr(record)
    source = read_source(record)
    caption = format_steps(COD_STEPS, BODIES)
    cod, dd = cod_record(record, source, caption, "m"), dd_record(record, source, BODIES[4], "m")
    assert repr(record) == snapshot
    assert cod["conversations"][0]["value"] == "<image>\nWhat is this? Describe the image step by step."
    assert dd["conversations"] == [{"from": "human", "value": "<image>\nWhat is this?"},
                                   {"from": "gpt", "value": BODIES[4]}]
    assert cod["source"] == dd["source"] == "vflan"
    no_question = read_source(llava("<image>"))
    assert cod_record(record, no_question, caption, "m")["conversations"][0]["value"] == (
        "<image>\nPlease generate a detailed caption of this image. Describe the image step-by-step.")
    assert dd_record(record, no_question, "d", "m")["conversations"][0]["value"] == (
        "<image>\nPlease generate a detailed caption of this image. Be as descriptive as possible.")


def test_messages_are_the_published_request():
    messages = build_messages("data:image/png;base64,AAAA", read_source(llava()))
    assert messages[0] == {"role": "system", "content": SYSTEM_PROMPT}
    text, image = messages[1]["content"]
    assert image == {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    assert text["text"] == "Question: <image>\nWhat is this?\n\nOriginal description: A dog."
    assert messages[2] == {"role": "assistant", "content": ASSISTANT_PREFILL}


def decode(url: str) -> tuple[str, Image.Image]:
    header, data = url.split(",", 1)
    return header, Image.open(io.BytesIO(base64.b64decode(data)))


@pytest.mark.parametrize(("fmt", "mime"), [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp"),
                                           ("GIF", "image/gif"), ("BMP", "image/png"), ("TIFF", "image/png")])
def test_mime_type_follows_the_content_not_the_name(tmp_path, fmt, mime):
    path = tmp_path / "picture.png"
    Image.new("RGB", (12, 9), (10, 200, 30)).save(path, format=fmt)
    header, image = decode(image_data_url(path))
    assert header == f"data:{mime};base64" and image.size == (12, 9)


def test_cmyk_image_is_converted_before_png_encoding(tmp_path):
    path = tmp_path / "print.tif"
    Image.new("CMYK", (5, 5)).save(path, format="TIFF")
    assert decode(image_data_url(path))[1].mode == "RGB"


def _turned_jpeg(path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees to view"
    Image.new("RGB", (64, 32), (200, 10, 10)).save(path, format="JPEG", exif=exif)


def _wide_grey(path):
    image = Image.new("I;16", (3, 1))
    image.putdata([0, 200, 65535])  # a 16-bit scan: training clips its levels at 255
    image.save(path, format="TIFF")


def _transparent(path):
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # transparent red: a viewer shows the background
    image.save(path, format="PNG")


def _animated(path):
    frames = [Image.new("RGB", (6, 6), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:])


@pytest.mark.parametrize("make", [_wide_grey, _transparent, _animated], ids=["wide-grey", "alpha", "animated"])
def test_the_annotator_sees_the_pixels_training_reads(tmp_path, make):
    """A CoD caption is training data for the pixels the model is given: wide grey levels scaled instead of clipped,
    alpha composited, or another frame described other pixels."""
    path = tmp_path / "picture"
    make(path)
    header, sent = decode(image_data_url(path))
    assert header == "data:image/png;base64" and sent.mode == "RGB" and not sent.getexif()
    assert sent.tobytes() == load_image(path).tobytes() and sent.size == load_image(path).size


def test_a_photo_turned_by_exif_is_sent_as_stored_as_a_jpeg(tmp_path):
    """vLLM turns a photo by its EXIF orientation; training, as the published code, uses it as stored. Sent as a
    PNG of its pixels it was about six times the JPEG's size."""
    path = tmp_path / "photo.jpg"
    _turned_jpeg(path)
    header, sent = decode(image_data_url(path))
    assert header == "data:image/jpeg;base64" and sent.size == (64, 32) and 0x0112 not in sent.getexif()
    difference = np.abs(np.asarray(sent, dtype=int) - np.asarray(load_image(path), dtype=int))
    assert difference.max() <= 8  # re-encoded on the photo's own quantisation tables


def test_a_broken_png_chunk_is_an_unreadable_image(tmp_path):
    """Pillow raises SyntaxError for a garbled chunk: it stopped the whole run, on every rerun."""
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, format="PNG")  # noise: its pixels span several IDAT chunks
    data = bytearray(buffer.getvalue())
    second = data.find(b"IDAT", data.find(b"IDAT") + 4)
    assert second > 0
    data[second:second + 4] = b"\x00\x01\x02\x03"
    (tmp_path / "broken.png").write_bytes(bytes(data))
    with pytest.raises(ImageLoadError, match="not a readable image .*broken PNG file"):
        image_data_url(tmp_path / "broken.png")


def test_a_camera_jpeg_with_more_pictures_is_sent_as_the_jpeg_it_is(tmp_path):
    path = tmp_path / "camera.jpg"
    Image.new("RGB", (8, 6), (200, 10, 10)).save(path, format="MPO", save_all=True,
                                                append_images=[Image.new("RGB", (8, 6))])
    assert Image.open(path).format == "MPO"
    url = image_data_url(path)
    assert url.startswith("data:image/jpeg;base64,") and base64.b64decode(url.split(",", 1)[1]) == path.read_bytes()


def test_unreadable_images_raise_a_clear_error(tmp_path):
    with pytest.raises(ImageLoadError, match="cannot read image"):
        image_data_url(tmp_path / "missing.png")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(ImageLoadError, match="not a readable image"):
        image_data_url(tmp_path / "junk.png")
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buffer, format="PNG")
    (tmp_path / "cut.png").write_bytes(buffer.getvalue()[:60])
    with pytest.raises(ImageLoadError):
        image_data_url(tmp_path / "cut.png")
    with pytest.raises(ImageLoadError, match="cannot read image .*null byte"):
        image_data_url(tmp_path / "ok\0.png")


def test_image_paths_resolve_against_the_folder(tmp_path):
    assert resolve_image("a/b.jpg", tmp_path, allow_outside=False) == tmp_path / "a" / "b.jpg"
    assert resolve_image("a/../b.jpg", tmp_path, allow_outside=False) == tmp_path / "a" / ".." / "b.jpg"  # inside
    assert resolve_image(str(tmp_path / "c.jpg"), tmp_path, allow_outside=False) == tmp_path / "c.jpg"
    assert str(resolve_image("d.jpg", None)) == "d.jpg"


@pytest.mark.parametrize("image", ["../secret.png", "a/../../secret.png", "/etc/hostname"])
def test_image_paths_that_leave_the_folder_are_refused_unless_allowed(tmp_path, image):
    folder = tmp_path / "images"
    with pytest.raises(ImageOutsideFolder, match="leads outside the image folder"):
        resolve_image(image, folder, allow_outside=False)
    assert resolve_image(image, folder) == folder / image



@pytest.mark.parametrize("image", ["../../private.png", "../private.png", "a/../../../private.png"])
def test_a_relative_image_folder_is_not_escaped_either(tmp_path, monkeypatch, image):
    # The folder as the scripts pass it (IMAGE_DIR=data/allava): relative to the working folder.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "allava").mkdir(parents=True)
    with pytest.raises(ImageOutsideFolder, match="leads outside the image folder"):
        resolve_image(image, "data/allava", allow_outside=False)
    assert resolve_image("a/../b.jpg", "data/allava", allow_outside=False) == Path("data/allava/a/../b.jpg")

def test_backoff_doubles_with_jitter_caps_and_honours_retry_after():
    policy = RetryPolicy(max_retries=5, backoff=1.0, max_backoff=5.0)
    for retry, ceiling in ((0, 1.0), (1, 2.0), (2, 4.0), (3, 5.0), (6, 5.0)):
        for _ in range(20):
            assert ceiling / 2 <= policy.delay(retry) <= ceiling
    assert policy.delay(0, retry_after=3.0) >= 3.0
    assert policy.delay(0, retry_after=100.0) <= 5.0


def test_endpoint_and_key_come_from_flag_or_environment(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-abc")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    assert resolve_endpoint(None) == ("http://127.0.0.1:9/v1", "sk-abc")
    assert resolve_endpoint("http://127.0.0.1:8000/v1") == ("http://127.0.0.1:8000/v1", "sk-abc")
    monkeypatch.delenv("OPENAI_API_KEY")
    assert resolve_endpoint(None) == ("http://127.0.0.1:9/v1", NO_KEY)
    monkeypatch.delenv("OPENAI_BASE_URL")
    with pytest.raises(FatalAPIError, match="OPENAI_API_KEY"):
        resolve_endpoint(None)


def test_redact_masks_the_key_everywhere():
    assert redact("Bearer sk-1 and sk-1 again", "sk-1") == "Bearer *** and *** again"
    assert redact("nothing", "") == "nothing"

"""Builds the synthetic text and number-plate evaluation set (scripts/text-eval runs it):
name badges, ID cards, house numbers and number plates rendered onto the photos of
people in ../shared/eval, with perspective, blur, scale and JPEG compression, each with
its exact box, plus the people-free photos of the shared set that show no text (those
that do are listed in SHOWS_TEXT), as they are: every region on them is a false one.

    python scripts/text_eval_set.py SHARED_EVAL OUT      # Pillow 13.0.0, numpy (PyPI)

Writes OUT/images/*.jpg, OUT/manifest.csv (text_gt = yes for every photo; the
people-free ones have no boxes) and OUT/text.csv (image,x,y,w,h,subset,font_px).
The box of a badge, card or house number is its letters' extent; a plate's box is the
whole plate (the border and the letters), because that is what identifies it. Text is
drawn with Pillow's own font (Aileron), so the set is the same on every machine; a
fixed seed makes it reproducible. Backgrounds: WIDER FACE and COCO photos (their
licences in SHARED_EVAL/SOURCES.md); a quarter of them enlarged to 12 MP, so the
tiled detection of large photos is measured too. And eight photos of the shared set
with real plates and signs, annotated by hand (REAL_TEXT; their licences there too).
"""
import csv
import math
import random
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

SHARED, OUT = Path(sys.argv[1]), Path(sys.argv[2])
(OUT / "images").mkdir(parents=True, exist_ok=True)
rng = random.Random(20261205)
FIRST = ["Alex", "Maria", "Jonas", "Aiko", "Fatima", "Pieter", "Chloe", "Ravi", "Ines", "Tomasz", "Leila", "Owen", "Sofia", "Kwame", "Hana", "Lucas"]
LAST = ["Morgan", "Okafor", "Lindqvist", "Tanaka", "Haddad", "de Vries", "Martin", "Sharma", "Costa", "Nowak", "Rahimi", "Evans", "Rossi", "Mensah", "Kim", "Silva"]
LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"


def font(size):
    return ImageFont.load_default(size=max(6, int(size)))


def homography(src, dst):
    """The 3×3 matrix mapping the four `src` points onto `dst`."""
    a, b = [], []
    for (x, y), (u, v) in zip(src, dst):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y]); b.append(u)
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y]); b.append(v)
    h = np.linalg.solve(np.array(a, float), np.array(b, float))
    return np.append(h, 1.0).reshape(3, 3)


def apply(h, points):
    out = []
    for x, y in points:
        u, v, w = h @ np.array([x, y, 1.0])
        out.append((u / w, v / w))
    return out


def warp(obj, box, scale, yaw, roll, blur):
    """`obj` (RGBA) scaled, turned by `roll` degrees, foreshortened as seen `yaw` degrees
    off its axis, and blurred: the warped image, and where `box`'s corners land in it."""
    w, h = obj.size
    corners = [(0, 0), (w, 0), (w, h), (0, h)]
    c, s = math.cos(math.radians(roll)), math.sin(math.radians(roll))
    near = 1.0 + 0.45 * math.sin(math.radians(abs(yaw)))  # the nearer side looks taller
    squeeze = math.cos(math.radians(yaw))
    dst = []
    for x, y in corners:
        tall = near if (x > 0) == (yaw > 0) else 1.0 / near
        px, py = (x - w / 2) * squeeze * scale, (y - h / 2) * tall * scale
        dst.append((px * c - py * s, px * s + py * c))
    minx, miny = min(p[0] for p in dst), min(p[1] for p in dst)
    dst = [(x - minx + 2, y - miny + 2) for x, y in dst]
    size = (math.ceil(max(p[0] for p in dst)) + 3, math.ceil(max(p[1] for p in dst)) + 3)
    forward = homography(corners, dst)
    inverse = np.linalg.inv(forward)
    coeffs = (inverse / inverse[2, 2]).flatten()[:8]
    warped = obj.transform(size, Image.PERSPECTIVE, tuple(coeffs), Image.BICUBIC)
    if blur > 0:
        warped = warped.filter(ImageFilter.GaussianBlur(blur))
    x1, y1, x2, y2 = box
    return warped, apply(forward, [(x1, y1), (x2, y1), (x2, y2), (x1, y2)])


def badge(letter):
    name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
    f, small = font(letter), font(letter * 0.5)
    pad = letter * 0.5
    tw = max(f.getbbox(name)[2], small.getbbox("HELLO my name is")[2])
    w, h = int(tw + 2 * pad), int(letter * 2.6 + 2 * pad)
    img = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    colour = rng.choice([(246, 246, 240), (255, 230, 120), (200, 225, 255)])
    d.rounded_rectangle([0, 0, w - 1, h - 1], int(pad), fill=colour + (255,), outline=(30, 60, 150, 255), width=max(1, int(letter / 12)))
    d.text((pad, pad * 0.6), "HELLO my name is", font=small, fill=(30, 60, 150, 255))
    at = (pad, pad + letter * 1.1)
    d.text(at, name, font=f, fill=(12, 12, 12, 255))
    return img, d.textbbox(at, name, font=f)


def id_card(letter):
    number = " ".join("".join(rng.choice("0123456789") for _ in range(4)) for _ in range(3))
    f = font(letter)
    w, h = int(f.getbbox(number)[2] * 1.25), int(f.getbbox(number)[2] * 0.75)
    img = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    d.rounded_rectangle([0, 0, w - 1, h - 1], int(h / 14), fill=(218, 230, 246, 255), outline=(80, 80, 80, 255), width=max(1, int(letter / 14)))
    d.rectangle([int(w * 0.06), int(h * 0.2), int(w * 0.3), int(h * 0.62)], fill=(170, 150, 140, 255))  # the photo
    d.text((int(w * 0.36), int(h * 0.22)), "IDENTITY CARD", font=font(letter * 0.7), fill=(20, 40, 90, 255))
    at = (int(w * 0.08), int(h * 0.72))
    d.text(at, number, font=f, fill=(0, 0, 0, 255))
    return img, d.textbbox(at, number, font=f)


def house_number(letter):
    number = str(rng.randint(1, 2999))
    f = font(letter)
    bx = f.getbbox(number)
    pad = letter * 0.3
    w, h = int(bx[2] + 2 * pad), int(bx[3] + 2 * pad)
    img = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    d.rectangle([0, 0, w - 1, h - 1], fill=rng.choice([(30, 60, 120, 255), (240, 240, 235, 255), (20, 20, 20, 255)]))
    ink = (250, 250, 250, 255) if img.getpixel((1, 1))[0] < 128 else (10, 10, 10, 255)
    d.text((pad, pad), number, font=f, fill=ink)
    return img, d.textbbox((pad, pad), number, font=f)


def plate(letter):
    text = rng.choice([lambda: f"{rng.choice(LETTERS)}{rng.choice(LETTERS)}{rng.randint(10, 99)} {''.join(rng.choice(LETTERS) for _ in range(3))}",
                       lambda: f"{rng.randint(100, 999)}-{''.join(rng.choice(LETTERS) for _ in range(3))}",
                       lambda: f"{''.join(rng.choice(LETTERS) for _ in range(2))}-{rng.randint(1000, 9999)}"])()
    f = font(letter)
    bx = f.getbbox(text)
    w, h = int(bx[2] + letter * 0.8), int(letter * 1.5)
    img = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    d.rounded_rectangle([0, 0, w - 1, h - 1], max(1, int(letter / 8)), fill=rng.choice([(250, 250, 250, 255), (250, 215, 40, 255)]), outline=(0, 0, 0, 255), width=max(1, int(letter / 14)))
    d.text((letter * 0.4, (h - bx[3]) / 2 - bx[1] / 2), text, font=f, fill=(0, 0, 0, 255))
    return img, (0, 0, w, h)  # the whole plate


# People-free photos of the shared set that show real text (looked at on a contact sheet
# of every region the text target found on them): not photos without text, so they are
# left out, and the regions on the rest are all false.
SHOWS_TEXT = {
    "coco_000000000042.jpg": "a brand name on a bag",
    "coco_000000000073.jpg": "a motorbike's number plate",
    "coco_000000000081.jpg": "an airline's name on a plane",
    "coco_000000000142.jpg": "a carton's label",
    "coco_000000000164.jpg": "labelled tins on a shelf",
    "coco_000000000250.jpg": "street signs",
    "coco_000000000283.jpg": "a bottle's label",
    "coco_000000000394.jpg": "a name on a frisbee",
    "coco_000000000400.jpg": "a number plate",
    "coco_000000000599.jpg": "labelled remote-control keys",
    "coco_000000000605.jpg": "a coffee bag's print",
    "coco_000000000626.jpg": "a name on a building",
    "coco_000000000629.jpg": "a painted shop name",
    "coco_000000000650.jpg": "a photographer's credit line",
    "neg_opencv_alphamat_input_images_plant.jpg": "box labels",
    "neg_opencv_data_licenseplate_motion.jpg": "a number plate",
    "neg_opencv_data_sudoku.jpg": "a newspaper page",
    "neg_skimage_page.jpg": "a printed page",
}

# Real text in some of them, annotated here by hand (looked at on a 50-px grid, then
# checked drawn): x, y, w, h of each line or plate. Scored as `real-plate` and
# `real-sign` beside the synthetic kinds.
REAL_TEXT = {
    "coco_000000000073.jpg": [("real-plate", (14, 243, 118, 145))],  # a motorbike's plate, turned 45°
    "coco_000000000400.jpg": [("real-plate", (60, 312, 148, 32)), ("real-plate", (70, 287, 110, 21))],  # a boat's registration
    "neg_opencv_data_licenseplate_motion.jpg": [("real-plate", (225, 225, 135, 73))],  # a car's plate, motion-blurred
    "coco_000000000250.jpg": [("real-sign", (95, 274, 172, 88)), ("real-sign", (383, 262, 117, 112))],  # street signs
    "coco_000000000081.jpg": [("real-sign", (102, 175, 129, 18))],  # an airline's name
    "coco_000000000626.jpg": [("real-sign", (300, 91, 59, 14))],  # a name carved in brick
    "coco_000000000042.jpg": [("real-sign", (115, 343, 47, 121))],  # a brand on a slipper, vertical
    "coco_000000000394.jpg": [("real-sign", (330, 256, 128, 94))],  # a brand on a frisbee, curved
}

KINDS = [("badge", badge, (10, 60)), ("id-card", id_card, (8, 40)), ("house-number", house_number, (14, 140)), ("plate", plate, (8, 90))]


def main():
    rows = list(csv.DictReader(open(SHARED / "manifest.csv", newline="")))
    people = [r["image"] for r in rows if r["subset"] in ("easy", "medium", "hard", "coco-person")]
    empty = [r["image"] for r in rows if r["subset"] in ("negative", "coco-noperson") and r["image"] not in SHOWS_TEXT]
    rng.shuffle(people)
    manifest, boxes = [], []
    for i, name in enumerate(people[:120]):
        bg = Image.open(SHARED / "images" / name).convert("RGB")
        if i % 8 in (3, 6):  # 12 MP, a quarter of them, in both halves
            bg = bg.resize((4032, 3024) if bg.width >= bg.height else (3024, 4032), Image.BICUBIC)
        big = bg.width * bg.height > 6_000_000
        out = f"text_{i:03d}.jpg"
        placed = []
        for _ in range(rng.randint(1, 3)):
            kind, make, (lo, hi) = rng.choice(KINDS)
            letter = math.exp(rng.uniform(math.log(lo), math.log(hi))) * (2.5 if big else 1.0)
            obj, box = make(letter)
            yaw = rng.choice([0, 0, rng.uniform(-50, 50)]) if kind in ("plate", "house-number") else rng.uniform(-25, 25)
            roll = rng.uniform(-12, 12)
            blur = rng.choice([0, 0, rng.uniform(0.3, 1.5)])
            warped, quad = warp(obj, box, 1.0, yaw, roll, blur)
            if warped.width >= bg.width - 4 or warped.height >= bg.height - 4:
                continue
            for _ in range(20):  # somewhere it overlaps nothing placed before
                x, y = rng.randint(0, bg.width - warped.width - 1), rng.randint(0, bg.height - warped.height - 1)
                if all(x + warped.width < a or a2 < x or y + warped.height < b or b2 < y for a, b, a2, b2 in placed):
                    break
            else:
                continue
            placed.append((x, y, x + warped.width, y + warped.height))
            bg.paste(warped, (x, y), warped)
            xs, ys = [p[0] + x for p in quad], [p[1] + y for p in quad]
            x1, y1 = max(0, math.floor(min(xs))), max(0, math.floor(min(ys)))
            x2, y2 = min(bg.width, math.ceil(max(xs))), min(bg.height, math.ceil(max(ys)))
            boxes.append((out, x1, y1, x2 - x1, y2 - y1, kind, round(letter)))
        bg.save(OUT / "images" / out, quality=rng.choice([75, 85, 92]))
        manifest.append((out, "yes"))
    for name, lines in REAL_TEXT.items():
        out = f"text_real_{name}"
        Image.open(SHARED / "images" / name).convert("RGB").save(OUT / "images" / out, quality=95)
        manifest.append((out, "yes"))
        for kind, (x, y, w, h) in lines:
            boxes.append((out, x, y, w, h, kind, ""))
    for name in empty:
        Image.open(SHARED / "images" / name).convert("RGB").save(OUT / "images" / name, quality=95)
        manifest.append((name, "yes"))
    # Two photos with text, two without, and so on: the even and the odd rows (the two
    # halves scripts/text-eval scores) each get both kinds.
    with_text, without = [m for m in manifest if m[0].startswith("text_")], [m for m in manifest if not m[0].startswith("text_")]
    order = [m for i in range(0, len(without), 2) for m in with_text[i : i + 2] + without[i : i + 2]] + with_text[len(without):]
    with open(OUT / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "face_gt", "person_gt", "text_gt"])
        w.writerows([name, "no", "no", gt] for name, gt in order)
    with open(OUT / "text.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "x", "y", "w", "h", "subset", "font_px"])
        w.writerows(boxes)
    print(f"{len(with_text)} photos with {len(boxes)} texts ({len(REAL_TEXT)} real photos), {len(without)} without, in {OUT}")


main()

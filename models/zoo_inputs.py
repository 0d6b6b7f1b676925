"""Real inputs for the benchmark zoo: photo crops, English sentences, rendered text.

Accuracy numbers on random tensors mean nothing, so every zoo sample is real content: crops of
scikit-image's bundled photos, sentences written below, text drawn with Pillow. Calibration and
evaluation sets never share a source: photos are split by image, sentences by index, and
rendered text comes from separate random streams. All functions are seeded and pure numpy/PIL.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Photos split by image so no calibration crop overlaps an evaluation crop.
CALIB_PHOTOS = ["astronaut", "rocket", "coins", "camera", "grass", "immunohistochemistry",
                "stereo_motorcycle", "brick"]
EVAL_PHOTOS = ["coffee", "chelsea", "clock", "moon", "gravel", "hubble_deep_field", "retina", "cell"]

SENTENCES = [
    "The train to Boston leaves at seven fifteen from platform four.",
    "She planted tomatoes, basil and two rows of carrots behind the house.",
    "Our quarterly revenue grew by twelve percent despite higher shipping costs.",
    "Please remember to water the ferns while I am away next week.",
    "The museum reopened after a long renovation of its east wing.",
    "A sudden storm knocked out power across most of the valley.",
    "He apologized for the late reply and attached the signed contract.",
    "Photosynthesis converts light energy into chemical energy stored in sugars.",
    "The recipe calls for three eggs, a cup of flour and a pinch of salt.",
    "Researchers found that sleep improves memory consolidation in adults.",
    "My laptop battery drains quickly when the screen brightness is high.",
    "The committee will vote on the new budget proposal on Thursday.",
    "Wolves were reintroduced to the park in the middle of the nineties.",
    "Can you recommend a quiet restaurant near the harbor?",
    "The bridge was closed for inspection after engineers noticed a crack.",
    "Learning a second language is easier when you practice every day.",
    "The kids built a snowman with a carrot nose and a red scarf.",
    "Interest rates are expected to remain unchanged this quarter.",
    "The violinist played a haunting melody that silenced the audience.",
    "Always back up your files before installing a major system update.",
    "The hikers reached the summit just before the clouds rolled in.",
    "This software update fixes a bug that caused the app to crash on startup.",
    "Coffee prices rose sharply after a poor harvest in Brazil.",
    "The library extended its opening hours during the exam period.",
    "A good night's sleep is the cheapest performance enhancer there is.",
    "The detective noticed that the clock on the wall had stopped at midnight.",
    "Solar panels on the school roof now supply half of its electricity.",
    "I could not find my keys, so I climbed in through the kitchen window.",
    "The new vaccine showed strong protection in the late-stage trial.",
    "Traffic on the highway was backed up for nearly ten miles.",
    "He spent the weekend repainting the fence a pale shade of blue.",
    "The startup raised forty million dollars to expand into Europe.",
    "Elephants communicate over long distances using low-frequency rumbles.",
    "The meeting has been moved to the conference room on the third floor.",
    "Her novel tells the story of three sisters growing up by the sea.",
    "Wash your hands thoroughly before preparing food.",
    "The telescope captured images of a galaxy billions of light years away.",
    "Our flight was delayed by two hours because of fog in Chicago.",
    "The city council approved a plan to add more bicycle lanes downtown.",
    "He ordered a large pizza with mushrooms, olives and extra cheese.",
    "Regular exercise lowers the risk of heart disease and diabetes.",
    "The printer on the second floor is out of toner again.",
    "The orchestra will perform Beethoven's ninth symphony on Saturday.",
    "Glaciers in the Alps have lost a large share of their volume.",
    "My grandmother still writes letters by hand to her old friends.",
    "The customer asked for a refund because the package arrived damaged.",
    "Honeybees visit thousands of flowers to produce a single spoonful of honey.",
    "The new policy requires all employees to use two-factor authentication.",
    "We watched the sunset from the pier while eating ice cream.",
    "The defendant pleaded not guilty to all charges.",
    "A balanced diet includes vegetables, whole grains and lean protein.",
    "The football match ended in a draw after extra time.",
    "This neural network classifies images of clothing into ten categories.",
    "The old lighthouse has guided ships along the coast for two centuries.",
    "I need to renew my passport before the trip in June.",
    "The chef sharpened his knives before the dinner rush began.",
    "Heavy rain caused the river to overflow its banks overnight.",
    "The teacher handed back the graded essays with detailed comments.",
    "Electric cars are becoming cheaper as battery costs fall.",
    "The cat knocked a glass of water off the kitchen table.",
    "Scientists sequenced the genome of a rare deep-sea fish.",
    "The hotel offers free breakfast and a shuttle to the airport.",
    "Parents gathered in the gym for the annual science fair.",
    "The hard drive failed, but the backups were intact.",
    "The mountain village is famous for its cheese and wooden toys.",
    "Turn left at the gas station and follow the road for two miles.",
    "The senator announced she will not seek reelection next year.",
    "A strong password combines letters, numbers and symbols.",
    "The bakery sells out of croissants by nine every morning.",
    "Astronauts on the space station grow lettuce in a small greenhouse.",
    "The stock market fell sharply after the disappointing jobs report.",
    "My neighbor's dog barks every time the mail carrier walks by.",
    "The documentary explores the history of jazz in New Orleans.",
    "He fixed the leaking faucet with a new rubber washer.",
    "Wildfires forced thousands of residents to evacuate their homes.",
    "The conference keynote focused on privacy in machine learning.",
    "She won the chess tournament without losing a single game.",
    "The farmers market opens at eight on Sunday mornings.",
    "Antibiotics do not work against viral infections like the common cold.",
    "The package will be delivered between noon and four in the afternoon.",
    "Our team finished the project two days ahead of schedule.",
    "The ancient city was buried under volcanic ash for centuries.",
    "I prefer reading paper books to reading on a screen.",
    "The airline lost my suitcase, but it arrived the next morning.",
    "Children learn best when they feel safe and curious.",
    "The power grid struggled to meet demand during the heat wave.",
    "A gentle breeze carried the smell of pine through the open window.",
    "The bank will be closed on Monday for the public holiday.",
    "Measure twice and cut once, my father always said.",
    "The quarterback threw the winning pass in the final seconds.",
    "Recycling aluminum saves most of the energy needed to make new cans.",
    "The students presented their robot at the regional competition.",
    "He forgot his umbrella and got soaked on the way home.",
    "The doctor recommended more rest and plenty of fluids.",
    "Migrating birds use the earth's magnetic field to navigate.",
    "The price of the concert tickets doubled within an hour.",
    "Open the settings menu and select the privacy tab.",
    "The river delta supports hundreds of species of birds and fish.",
    "We should compress the model before deploying it to phones.",
    "The painting was sold at auction for a record price.",
]

WORDS = sorted({w.strip(".,?'").lower() for s in SENTENCES for w in s.split() if w.strip(".,?'").isalpha()})

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
FONT_FILES = ["DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
              "DejaVuSansMono.ttf", "DejaVuSansCondensed.ttf"]


# -- photos -----------------------------------------------------------------------------------------


def load_photo(name: str) -> np.ndarray:
    """A bundled scikit-image photo as HxWx3 uint8 RGB (gray ones are replicated)."""
    import skimage.data

    img = getattr(skimage.data, name)()
    if isinstance(img, tuple):  # stereo_motorcycle: (left, right, disparity); keep the left view
        img = img[0]
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return img[..., :3].astype(np.uint8)


def photo_crops(names: list[str], per_photo: int, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Random square crops (35-100% of the short side) with random flips, resized to size x size."""
    from PIL import Image

    crops = []
    for name in names:
        img = load_photo(name)
        h, w = img.shape[:2]
        for _ in range(per_photo):
            side = int(min(h, w) * rng.uniform(0.35, 1.0))
            y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            crop = Image.fromarray(img[y:y + side, x:x + side]).resize((size, size), Image.BILINEAR)
            crop = np.asarray(crop)
            crops.append(crop[:, ::-1] if rng.random() < 0.5 else crop)
    return crops


def to_nchw(img: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 -> 1x3xHxW float32 in [-1, 1], i.e. (x/255 - 0.5) / 0.5."""
    x = img.astype(np.float32).transpose(2, 0, 1)[None] / 255.0
    return np.ascontiguousarray((x - 0.5) / 0.5)


# -- text rendering -----------------------------------------------------------------------------------


def font(size: int, rng: np.random.Generator):
    """A random DejaVu face at `size`; Pillow's built-in font when DejaVu is not installed."""
    from PIL import ImageFont

    available = [FONT_DIR / f for f in FONT_FILES if (FONT_DIR / f).exists()]
    if available:
        return ImageFont.truetype(str(available[rng.integers(len(available))]), size)
    return ImageFont.load_default(size=size)


def random_phrase(rng: np.random.Generator, max_chars: int) -> str:
    """Two or three words, a number or a date: short enough to read at OCR line height."""
    kind = rng.integers(6)
    if kind == 0:
        return f"{rng.integers(1, 28):02d}.{rng.integers(1, 13):02d}.{rng.integers(1990, 2030)}"
    if kind == 1:
        return f"Total: ${rng.integers(1, 999)}.{rng.integers(0, 100):02d}"
    words = []
    while True:
        word = str(rng.choice(WORDS))
        word = word.capitalize() if not words and rng.random() < 0.6 else word
        if words and len(" ".join(words + [word])) > max_chars:
            break
        words.append(word)
        if len(words) == 3:
            break
    return " ".join(words)[:max_chars]


def render_line(text: str, rng: np.random.Generator, height: int = 48) -> np.ndarray:
    """One text line, tightly framed like a detector crop, in random light/dark colors."""
    from PIL import Image, ImageDraw

    f = font(int(height * rng.uniform(0.6, 0.8)), rng)
    x0, y0, x1, y1 = f.getbbox(text)
    pad = int(rng.integers(2, 8))
    bg = tuple(int(v) for v in rng.integers(200, 256, 3))
    fg = tuple(int(v) for v in rng.integers(0, 80, 3))
    img = Image.new("RGB", (x1 - x0 + 2 * pad, y1 - y0 + 2 * pad), bg)
    ImageDraw.Draw(img).text((pad - x0, pad - y0), text, font=f, fill=fg)
    return np.asarray(img)


def line_input(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """rapidocr's rec/cls preprocessing: keep aspect, resize to `height`, normalize, zero-pad right."""
    from PIL import Image

    h, w = img.shape[:2]
    new_w = min(width, int(np.ceil(height * w / h)))
    resized = np.asarray(Image.fromarray(img).resize((new_w, height), Image.BILINEAR))
    out = np.zeros((1, 3, height, width), np.float32)
    out[0, :, :, :new_w] = to_nchw(resized[..., ::-1])[0]  # rapidocr feeds OpenCV's BGR order
    return out


def render_page(rng: np.random.Generator, size: int = 320) -> tuple[np.ndarray, list[dict]]:
    """A page of text lines at random sizes and offsets; returns the image and each line's box."""
    from PIL import Image, ImageDraw

    bg = tuple(int(v) for v in rng.integers(215, 256, 3))
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    lines, y = [], int(rng.integers(6, 20))
    while True:
        f = font(int(rng.integers(14, 30)), rng)
        text = random_phrase(rng, 22)
        x = int(rng.integers(6, 40))
        x0, y0, x1, y1 = draw.textbbox((x, y), text, font=f)
        if y1 > size - 6:
            break
        if x1 < size - 4:
            draw.text((x, y), text, font=f, fill=tuple(int(v) for v in rng.integers(0, 90, 3)))
            lines.append({"text": text, "box": [x0, y0, x1, y1]})
        y = y1 + int(rng.integers(6, 22))
    return np.asarray(img), lines

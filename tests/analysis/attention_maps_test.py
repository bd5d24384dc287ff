"""The per-pair attention figure and the self-contained HTML page."""

import base64
import html.parser

import numpy as np

from lovt_keras.analysis.attention_maps import plot_attention_pair, write_attention_html


class _Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.external, self.items = [], [], 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag in ("script", "link") or (tag == "img" and not attrs["src"].startswith("data:")):
            self.external.append(tag)
        if tag == "li":
            self.items += 1


def test_pair_figures_and_an_offline_page(tmp_path):
    image = np.linspace(0, 1, 64 * 64).reshape(64, 64)
    attention = np.eye(4)[[0, 3]]  # two sentences, one region each (2 x 2 grid)
    mask = np.zeros((64, 64), bool)
    mask[:32, :32] = True
    pngs = [
        plot_attention_pair(image, ["Mass on the <left>.", "Normal heart."], attention, (2, 2),
                            tmp_path / f"pair_{k}.png", pooling_weights=np.full(4, 0.25),
                            masks=[mask, None], scores=[1.0, None], title=f"pair {k}")
        for k in range(2)
    ]
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pairs = [dict(png=p, title=f"pair {k}", sentences=["Mass on the <left>.", "Normal heart."],
                  scores=[1.0, None]) for k, p in enumerate(pngs)]
    page_path = write_attention_html(pairs, tmp_path / "page.html")
    text = page_path.read_text()
    parser = _Page()
    parser.feed(text)
    assert parser.external == [] and parser.items == 4
    assert len(parser.images) == 2
    prefix = "data:image/png;base64,"
    assert base64.b64decode(parser.images[0][len(prefix):]) == pngs[0].read_bytes()
    assert "Mass on the &lt;left&gt;." in text and "[100% of its attention in the mask]" in text

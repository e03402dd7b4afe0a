"""Pictures of masks and receptive fields as matplotlib figures, with labelled axes and titles.

    import sparsa, sparsa.plot
    masks = sparsa.compile("heads 4\\nlayers 2\\nattend = window(16 * (h + 1))", n=512)
    sparsa.plot.mask(masks, layer=0, head=1).savefig("mask.png")     # one (layer, head)
    sparsa.plot.overview(masks)                                       # every (layer, head)
    sparsa.plot.gallery({"window": masks, "dense": sparsa.compile("attend = dense", n=512)})
    sparsa.plot.receptive_field(masks, token=256)                     # the light cone
    sparsa.plot.coverage(masks)                                       # pairs connected per layer

Every function returns the matplotlib Figure (drawn with pyplot, so a notebook shows it; close it
with plt.close(fig) in loops). The numbers come from the bindings (to_dense, csr, densities,
reach_token, reach_coverage); this file only lays them out. matplotlib is imported on first use:
`import sparsa` works without it, and MaskSet.png() draws without it.
"""

import numpy as np

# [SECTION] colours: one legend for every mask picture (the block kinds of the engines)
# Token pictures: 0 not kept, 1 dropped pair of a partial block, 2 kept pair of a partial block,
# 3 pair of a full block. Block pictures use 0, 2 and 3 (a partial block as a whole). The colours
# are plot/mask_figure.hpp's, so MaskSet.png() and these figures read alike.
_COLOURS = ["#f2f2f2", "#f8dcc0", "#e07b24", "#1f4e8c"]
_LEGEND = ["not kept", "partial block: masked pair", "partial block: kept pair", "full block"]
_LEGEND_BLOCKS = {0: "not kept", 2: "partial block (bitmask per pair)", 3: "full block"}

# token pictures up to this n in "auto" (an [n, n] image); to_dense allows up to 8192
_AUTO_TOKEN_N = 1024
_MAX_TOKEN_N = 8192
# a block picture has at most this many cells a side (more blocks are pooled, the kept kind wins): about
# the axes' width in pixels, so that matplotlib's own shrinking does not drop one-block lines
_MAX_PIXELS = 400
# overview() panels before it asks for a selection
_MAX_PANELS = 256


def _pyplot(caller):
    try:
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError(f"sparsa.plot.{caller}() needs matplotlib, which is not installed "
                          "(apt install python3-matplotlib, or pip install matplotlib); "
                          "MaskSet.png() draws a mask set without it") from e
    return plt


def _mask_set_check(caller, masks):
    from . import MaskSet  # here, not at import: sparsa imports this module
    if not isinstance(masks, MaskSet):
        raise TypeError(f"sparsa.plot.{caller}(): masks must be a sparsa.MaskSet (from sparsa.compile() or sparsa.load()), "
                        f"not {type(masks).__name__}")


def _index_check(caller, name, value, count):
    if isinstance(value, bool) or not hasattr(type(value), "__index__"):
        raise TypeError(f"sparsa.plot.{caller}(): {name} must be an integer, not {type(value).__name__} {value!r}")
    if not 0 <= value < count:
        raise ValueError(f"sparsa.plot.{caller}(): {name} {value} is out of range: the mask set has {count} "
                         f"{name}{'s' if count != 1 else ''} (0..{count - 1})")


def _colormap():
    from matplotlib.colors import ListedColormap
    return ListedColormap(_COLOURS)


def _legend_handles(kinds):
    from matplotlib.patches import Patch
    labels = _LEGEND_BLOCKS if 1 not in kinds else dict(enumerate(_LEGEND))
    return [Patch(facecolor=_COLOURS[k], edgecolor="#888888", label=labels[k]) for k in sorted(labels) if k in kinds or k == 0]


# [SECTION] images: the kinds of one (layer, head) as a small int8 picture

def _token_image(masks, layer, head):
    """[n, n] int8 in 0..3 (see _COLOURS): each pair, with the kind of the block it lies in."""
    n, block = masks.n, masks.block
    kept = masks.to_dense(layer, head)
    grid = masks.block_grid(layer, head)                           # [q_blocks, k_blocks]: 0, 1 partial, 2 full
    kind = np.repeat(np.repeat(grid, block, axis=0), block, axis=1)[:n, :n]
    image = np.where(kind == 2, 3, np.where(kind == 1, np.where(kept, 2, 1), 0)).astype(np.int8)
    return image


def _block_image(masks, layer, head, pixels):
    """[p, p] int8 in {0, 2, 3}: block kinds, `per` x `per` blocks pooled into a pixel when the
    blocks are more than `pixels` (a pixel shows the strongest kind it covers, so a one-block line
    never vanishes when the picture is shrunk). From the CSR arrays, so n = 1M costs the kept
    blocks, not blocks^2. Returns (image, per)."""
    csr = masks.csr(layer, head)
    row_ptr, col_idx, partial_idx = csr["row_ptr"], csr["col_idx"], csr["partial_idx"]
    blocks = len(row_ptr) - 1
    per = -(-blocks // pixels)
    side = -(-blocks // per)
    rows = np.repeat(np.arange(blocks, dtype=np.int64), np.diff(row_ptr))
    kind = np.where(partial_idx < 0, 3, 2).astype(np.int8)
    image = np.zeros((side, side), np.int8)
    np.maximum.at(image, (rows // per, col_idx.astype(np.int64) // per), kind)
    return image, per


def _resolution_pick(caller, masks, resolution):
    if resolution not in ("auto", "token", "block"):
        raise ValueError(f"sparsa.plot.{caller}(): resolution must be 'auto', 'token' or 'block', not {resolution!r}")
    if resolution == "token" and masks.n > _MAX_TOKEN_N:
        raise ValueError(f"sparsa.plot.{caller}(): resolution='token' draws every pair and is limited to n <= {_MAX_TOKEN_N} "
                         f"(n = {masks.n}); use resolution='block' (or 'auto')")
    if resolution == "auto":
        return "token" if masks.n <= _AUTO_TOKEN_N else "block"
    return resolution


def _draw_kinds(ax, masks, layer, head, resolution, pixels):
    """Draws (layer, head) on ax with axes in tokens; returns the kinds drawn and a note."""
    n = masks.n
    if resolution == "token":
        image, note, span = _token_image(masks, layer, head), "each pixel one (query, key) pair", n
    else:
        image, per = _block_image(masks, layer, head, pixels)
        note = f"each cell one {masks.block} x {masks.block} block" if per == 1 else \
            f"each cell {per} x {per} blocks of {masks.block} (the strongest kind shown)"
        span = image.shape[0] * per * masks.block                  # the last cell may reach past n
    ax.imshow(image, cmap=_colormap(), vmin=0, vmax=3, interpolation="nearest", extent=(0, span, span, 0))
    ax.set_xlim(0, n)
    ax.set_ylim(n, 0)
    return set(np.unique(image).tolist()), note


# [SECTION] mask

def mask(masks, layer=0, head=0, ax=None, resolution="auto", title=None, legend=True):
    """One (layer, head) mask: queries down, keys across, both in tokens; pairs coloured by the block
    kind the engines see (full, partial, not kept).

    resolution: 'token' draws every pair ([n, n], n <= 8192), so dilations and causal edges inside a
    partial block show; 'block' draws the block grid (any n; above 400 blocks a cell pools several);
    'auto': tokens for n <= 1024, blocks above. ax: draw into this matplotlib Axes; else a new figure.
    title: the name to show instead of "layer L, head H" (the density is always given). legend:
    False leaves the legend out (gallery() gives one for all). Returns the Figure.
    """
    _mask_set_check("mask", masks)
    _index_check("mask", "layer", layer, masks.layers)
    _index_check("mask", "head", head, masks.heads)
    if title is not None and not isinstance(title, str):
        raise TypeError(f"sparsa.plot.mask(): title must be a str or None, not {type(title).__name__}")
    resolution = _resolution_pick("mask", masks, resolution)
    plt = _pyplot("mask")
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.4, 6.6), layout="constrained")
    else:
        fig = ax.figure
    kinds, note = _draw_kinds(ax, masks, layer, head, resolution, _MAX_PIXELS)
    density = masks.stats(layer, head).density
    if title is None:
        name = "" if masks.script_name in ("", "<string>") else f"{masks.script_name}: "
        ax.set_title(f"{name}layer {layer}, head {head}: density {100 * density:.3g}%\n"
                     f"n = {masks.n}, block {masks.block}; {note}", fontsize=10)
    else:
        ax.set_title(f"{title}\ndensity {100 * density:.3g}%", fontsize=10)
    ax.set_xlabel("Key position k (tokens)")
    ax.set_ylabel("Query position q (tokens)")
    ax.xaxis.set_label_position("top")
    ax.xaxis.tick_top()
    if legend:
        ax.legend(handles=_legend_handles(kinds), loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=2, fontsize=8,
                  frameon=False)
    return fig


def gallery(named_masks, layer=0, head=0, cols=4, resolution="auto", title=None):
    """Several mask sets side by side, one (layer, head) of each, titled by name with its density:
    named_masks is a dict {name: MaskSet}. Axes in tokens, one legend for all; resolution as for
    mask(). title: the figure's title (default: how many patterns, and at which n). Returns the Figure.
    """
    if not isinstance(named_masks, dict) or not named_masks:
        raise TypeError("sparsa.plot.gallery(): named_masks must be a non-empty dict {name: sparsa.MaskSet}, "
                        f"not {type(named_masks).__name__}")
    if isinstance(cols, bool) or not hasattr(type(cols), "__index__") or cols < 1:
        raise ValueError(f"sparsa.plot.gallery(): cols must be a whole number >= 1, not {cols!r}")
    for name, m in named_masks.items():
        _mask_set_check("gallery", m)
        _index_check("gallery", "layer", layer, m.layers)
        _index_check("gallery", "head", head, m.heads)
    plt = _pyplot("gallery")
    cols = min(cols, len(named_masks))
    rows = -(-len(named_masks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.9 * cols, 4.1 * rows + 0.6), squeeze=False, layout="constrained")
    kinds = set()
    for ax, (name, m) in zip(axes.flat, named_masks.items()):
        mask(m, layer, head, ax=ax, resolution=resolution, title=str(name), legend=False)
        kinds |= set(np.unique(ax.images[0].get_array()).tolist())
    for ax in axes.flat[len(named_masks):]:
        ax.set_axis_off()
    ns = sorted({m.n for m in named_masks.values()})
    fig.suptitle(title if title is not None else
                 f"{len(named_masks)} patterns at n = {', '.join(str(n) for n in ns)} (layer {layer}, head {head})", fontsize=13)
    # one legend for all at the bottom, in a strip the layout leaves free (0.45 inch)
    from matplotlib.layout_engine import ConstrainedLayoutEngine
    height = fig.get_figheight()
    fig.set_layout_engine(ConstrainedLayoutEngine(h_pad=0.12, rect=(0, 0.45 / height, 1, 1 - 0.45 / height)))
    fig.legend(handles=_legend_handles(kinds), loc="lower center", bbox_to_anchor=(0.5, 0.02 / height), ncol=4, fontsize=9,
               frameon=False)
    return fig


# [SECTION] overview

def _selection(caller, name, chosen, count):
    if chosen is None:
        return list(range(count))
    try:
        chosen = list(chosen)
    except TypeError:
        raise TypeError(f"sparsa.plot.{caller}(): {name} must be a list or range of indices, "
                        f"not {type(chosen).__name__} {chosen!r}") from None
    if not chosen:
        raise ValueError(f"sparsa.plot.{caller}(): {name} is empty (leave it out to draw every one)")
    for i in chosen:
        _index_check(caller, name[:-1], i, count)
    return chosen


def overview(masks, layers=None, heads=None, resolution="auto"):
    """Every (layer, head) mask as a grid of small pictures (layers down, heads across), each with its
    density under it, like bertviz's model view for attention. layers, heads: lists or ranges to draw
    only some (more than 256 panels are refused: pick with e.g. layers=range(0, 48, 4)).
    resolution as for mask(), with 'auto' choosing tokens up to n = 256 (panels are small). Returns the Figure.
    """
    _mask_set_check("overview", masks)
    layers = _selection("overview", "layers", layers, masks.layers)
    heads = _selection("overview", "heads", heads, masks.heads)
    panels = len(layers) * len(heads)
    if panels > _MAX_PANELS:
        raise ValueError(f"sparsa.plot.overview(): {len(layers)} layers x {len(heads)} heads = {panels} panels is too many "
                         f"to draw (at most {_MAX_PANELS}); pick some with layers=range(0, {masks.layers}, "
                         f"{-(-len(layers) * len(heads) // _MAX_PANELS)}) or heads=[...], or use MaskSet.png()")
    if resolution == "auto":
        resolution = "token" if masks.n <= 256 else "block"
    resolution = _resolution_pick("overview", masks, resolution)
    plt = _pyplot("overview")
    # Laid out in inches (constrained layout cannot place a figure legend in matplotlib 3.6): panels of
    # `side`, a gap under each for its density, a margin left for "layer l", the legend at the bottom.
    rows, cols = len(layers), len(heads)
    side = max(0.9, min(1.7, 15.0 / cols, 18.0 / rows))
    gap, left, right, top, bottom = 0.32, 0.55, 0.15, 0.85, 0.85
    width, height = left + cols * side + (cols - 1) * 0.12 + right, top + rows * (side + gap) + bottom
    fig, axes = plt.subplots(rows, cols, figsize=(max(width, 6.0), height), squeeze=False)
    extra = (max(width, 6.0) - width) / 2                            # a narrow grid is centred
    fig.subplots_adjust(left=(left + extra) / max(width, 6.0), right=1 - (right + extra) / max(width, 6.0),
                        top=1 - top / height, bottom=(bottom + gap) / height, wspace=0.12 / side, hspace=gap / side)
    densities = masks.densities()
    kinds, note = set(), ""
    for i, layer in enumerate(layers):
        for j, head in enumerate(heads):
            ax = axes[i, j]
            drawn, note = _draw_kinds(ax, masks, layer, head, resolution, 64)
            kinds |= drawn
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(f"{100 * densities[layer, head]:.3g}%", fontsize=8, labelpad=2)
            if j == 0:
                ax.set_ylabel(f"layer {layer}", fontsize=9)
            if i == 0:
                ax.set_title(f"head {head}", fontsize=9)
    name = "" if masks.script_name in ("", "<string>") else f"{masks.script_name}: "
    fig.suptitle(f"{name}{masks.layers} layers x {masks.heads} heads, n = {masks.n}, block {masks.block}, "
                 f"mean density {100 * masks.density:.3g}%", fontsize=11)
    fig.text(0.5, 0.55 / height, "each panel: query q down, key k across (0 to n); its density under it",
             ha="center", va="center", fontsize=9)
    fig.legend(handles=_legend_handles(kinds), loc="lower center", bbox_to_anchor=(0.5, 0.05 / height), ncol=4, fontsize=8,
               frameon=False)
    return fig


# [SECTION] receptive field

def receptive_field(masks, token, direction="in", ax=None):
    """The light cone of one token: its field after each layer (residual connections), from
    sparsa.reach_token. direction 'in': the keys query `token` has seen; 'out': the queries that have
    seen key `token`. Layers go up, positions across; a second panel gives the field's size (not
    drawn when ax is given). Returns the Figure.
    """
    _mask_set_check("receptive_field", masks)
    if direction not in ("in", "out"):
        raise ValueError(f"sparsa.plot.receptive_field(): direction must be 'in' (the keys a query has seen) or "
                         f"'out' (the queries that have seen a key), not {direction!r}")
    from . import reach_token
    field = reach_token(masks, token, direction=direction, keep_sets=True)
    plt = _pyplot("receptive_field")
    n, layers = masks.n, masks.layers
    sets, span = field.sets, n                                              # [layers + 1, n] bool
    if n > 2 * _MAX_PIXELS:                                                 # pool positions: a pixel is reached if any is
        per = -(-n // (2 * _MAX_PIXELS))
        padded = np.zeros((layers + 1, per * -(-n // per)), bool)
        padded[:, :n] = sets
        sets, span = padded.reshape(layers + 1, -1, per).any(axis=2), padded.shape[1]
    from matplotlib.colors import ListedColormap
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    handles = [Patch(facecolor="#2c7fb8", label="in the field"),
               Patch(facecolor="#f4f4f4", edgecolor="#888888", label="not reached yet"),
               Line2D([], [], color="#d62728", label=f"token {token}")]
    sizes_ax = None
    if ax is None:
        height = min(7.0, 2.2 + 0.22 * (layers + 1))
        fig, (ax, sizes_ax) = plt.subplots(1, 2, figsize=(11, height), sharey=True, gridspec_kw={"width_ratios": [3, 1]})
        # the legend in a strip of 0.35 inch under the panels, which the layout leaves free
        from matplotlib.layout_engine import ConstrainedLayoutEngine
        fig.set_layout_engine(ConstrainedLayoutEngine(rect=(0, 0.35 / height, 1, 1 - 0.35 / height)))
        fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.02 / height), ncol=3, fontsize=8, frameon=False)
    else:
        fig = ax.figure
        ax.legend(handles=handles, loc="upper right", fontsize=8)
    ax.imshow(sets, cmap=ListedColormap(["#f4f4f4", "#2c7fb8"]), vmin=0, vmax=1, interpolation="nearest", aspect="auto",
              origin="lower", extent=(0, span, -0.5, layers + 0.5))
    ax.axvline(token + 0.5, color="#d62728", linewidth=1)
    what = f"the keys query {token} has seen" if direction == "in" else f"the queries that have seen key {token}"
    ax.set_title(f"Receptive field of token {token} ({direction}): {what}", fontsize=10)
    ax.set_xlabel(("Key position k" if direction == "in" else "Query position q") + " (tokens)")
    ax.set_ylabel("After layer l (0: before any)")
    ax.set_xlim(0, n)
    if sizes_ax is not None:
        sizes = np.asarray(field.sizes)
        sizes_ax.plot(sizes, np.arange(len(sizes)), "o-", color="#2c7fb8", markersize=3)
        sizes_ax.axvline(n, color="#888888", linestyle="--", linewidth=1)
        sizes_ax.set_xlim(0, n * 1.05)
        sizes_ax.set_xlabel("Tokens in the field")
        sizes_ax.set_title(f"all n = {n} after layer {field.layers_to_all}" if field.layers_to_all >= 0 else
                           f"{sizes[-1]} of n = {n} after {layers} layers", fontsize=10)
        sizes_ax.tick_params(labelleft=False)
        sizes_ax.grid(alpha=0.3)
    return fig


# [SECTION] coverage

def _coverages(masks_or_coverage, resolution, max_layers):
    """[(label, ReachCoverage)] from one MaskSet or ReachCoverage, a list of them, or a dict {label: either}."""
    from . import MaskSet, ReachCoverage, reach_coverage
    if isinstance(masks_or_coverage, dict):
        items = list(masks_or_coverage.items())
    elif isinstance(masks_or_coverage, (list, tuple)):
        items = [(None, m) for m in masks_or_coverage]
    else:
        items = [(None, masks_or_coverage)]
    if not items:
        raise ValueError("sparsa.plot.coverage(): nothing to draw (give a MaskSet, a ReachCoverage, or a dict of them)")
    out = []
    for label, item in items:
        if isinstance(item, MaskSet):
            cov = reach_coverage(item, resolution=resolution, max_layers=max_layers)
            label = label if label is not None else (item.script_name if item.script_name not in ("", "<string>") else "pattern")
        elif isinstance(item, ReachCoverage):
            cov, label = item, label if label is not None else "pattern"
        else:
            raise TypeError("sparsa.plot.coverage(): expected a sparsa.MaskSet or sparsa.ReachCoverage (or a dict or list "
                            f"of them), not {type(item).__name__}")
        out.append((str(label), cov))
    return out


def coverage(masks_or_coverage, resolution="auto", max_layers=0, ax=None, shown_layers=None):
    """Pairs connected after each layer (residual connections), from sparsa.reach_coverage: one curve per
    pattern. masks_or_coverage: a MaskSet, a ReachCoverage, or a dict {label: either} (a list: unlabelled).
    resolution, max_layers: passed to reach_coverage for MaskSets. shown_layers: the x range (default: up
    to the last layer that adds pairs). A causal pattern counts only its k <= q pairs, so it reaches 100%;
    the figure says so, and for one causal curve also draws it against all n^2 pairs, where it stops at
    about 50%. Returns the Figure.
    """
    if resolution not in ("auto", "token", "block"):
        raise ValueError(f"sparsa.plot.coverage(): resolution must be 'auto', 'token' or 'block', not {resolution!r}")
    curves = _coverages(masks_or_coverage, resolution, max_layers)
    plt = _pyplot("coverage")
    if ax is None:
        fig, ax = plt.subplots(figsize=(9, 5.2), layout="constrained")
    else:
        fig = ax.figure
    longest = max(len(cov.connected) - 1 for _, cov in curves)
    if shown_layers is None:
        shown_layers = max(1, max(cov.saturation_layers for _, cov in curves), max(cov.layers for _, cov in curves))
    if isinstance(shown_layers, bool) or not hasattr(type(shown_layers), "__index__") or shown_layers < 1:
        raise ValueError(f"sparsa.plot.coverage(): shown_layers must be a whole number >= 1, not {shown_layers!r}")
    notes = []
    causal_any = any(cov.causal for _, cov in curves)
    for label, cov in curves:
        connected = np.asarray(cov.connected, dtype=np.float64)
        # past the computed layers nothing changes: extend flat so every curve spans the x range
        span = min(shown_layers, longest)
        if len(connected) < span + 1:
            connected = np.concatenate([connected, np.full(span + 1 - len(connected), connected[-1])])
        connected = connected[:shown_layers + 1]
        layers_axis = np.arange(len(connected))
        needed = f"all after {cov.layers_needed}" if cov.layers_needed >= 0 else \
            ("more layers than computed" if cov.stopped else "never all")
        text = f"{label}: {needed}" + (" (causal: of the k <= q pairs)" if cov.causal else "")
        style = "o-" if shown_layers <= 40 else "-"
        line, = ax.plot(layers_axis, 100 * connected / cov.target_pairs, style, markersize=3, label=text)
        if cov.causal and len(curves) == 1:
            ax.plot(layers_axis, 100 * connected / (cov.n * cov.n), "--", color=line.get_color(), alpha=0.7,
                    label="the same, of all n^2 pairs: stops near 50% (a causal mask never links k > q)")
        if cov.layers_needed >= 0 and cov.layers_needed <= shown_layers:
            ax.plot([cov.layers_needed], [100], "*", color=line.get_color(), markersize=10)
        if cov.layers_needed < 0 and cov.never_reason:
            notes.append(f"{label}: {cov.never_reason}")
    first = curves[0][1]
    if len({cov.layers for _, cov in curves}) == 1 and first.layers < shown_layers:
        ax.axvline(first.layers, color="#888888", linestyle=":", linewidth=1)
        ax.annotate(f"the script's {first.layers} layers end;\npast them the last layer repeats", (first.layers, 3),
                    xytext=(4, 0), textcoords="offset points", fontsize=8, color="#555555")
    resolutions = {cov.resolution for _, cov in curves}
    if "block" in resolutions:
        notes.append("block resolution: an upper bound on the pairs connected (resolution='token' is exact, n <= ~8192)")
    if causal_any:
        notes.append("causal: only the n (n + 1) / 2 pairs with k <= q can ever connect, and 100% means all of them")
    ns = sorted({cov.n for _, cov in curves})
    ax.set_title(f"Coverage: (query, key) pairs connected after each layer, n = {', '.join(str(n) for n in ns)}", fontsize=11)
    ax.set_xlabel("Layers (0: before any layer)")
    ax.set_ylabel("Pairs connected (%)")
    ax.set_ylim(0, 104)
    ax.set_xlim(0, shown_layers)
    ax.grid(alpha=0.3)
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    # the notes (causal, block resolution, why never) head the legend, where a reader looks for them
    ax.legend(fontsize=8, loc="best", title="\n".join(notes) if notes else None, title_fontsize=8, alignment="left")
    return fig

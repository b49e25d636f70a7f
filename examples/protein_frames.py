"""Motif scaffolding of toy protein backbones: positions, frames and residue types diffuse together.

    python examples/protein_frames.py [--quick] [--out DIR]

Each chain has L = 32 residues, each with a position (its CA atom, in nm), a backbone frame
(a rotation, as a unit quaternion) and a residue type. The script builds the chains itself:
ideal helices and strands of random lengths joined by loops of random shape, each chain seen
in the frame of its motif; types come from a helix-, strand- or loop-favouring alphabet, so
geometry and sequence are correlated. The three components diffuse jointly as a dict of
processes; one small transformer (no equivariance built in) predicts x0 of all three, seeing
its own previous estimate (self-conditioning). Residues 1-10, the motif, are held by a mask in
training and in sampling: the model learns to generate the other 22 around a given motif.
Learning is measured on the generated scaffolds against data and against the same model
untrained: the neighbour CA-CA distances (3.8 A in every chain), helix content, whether each
frame agrees with the frame of the generated CA trace, and whether residue types follow the
local geometry.
"""

import math
import time

import matplotlib.pyplot as plt
import roma
import torch
from torch import nn
from torch.nn.functional import normalize, one_hot

import bridgediff as bd
from _common import device, parse_args, save

L, MOTIF = 32, 10   # residues per chain; residues 1-10 (indices 0-9) are the motif
CA_CA = 0.38        # nm between neighbouring CA atoms
ALPHABET = "ALE" "VIY" "GPN"  # helix-, strand- and loop-favouring residue types
K = len(ALPHABET)
HELIX, STRAND, LOOP = 0, 1, 2
# Positions are centred on the motif (see "Why the motif's centroid" below) and spread by
# about 1.2 nm around it; the OU equilibrium N(0, VOLATILITY²) (reversion 1/2) matches that.
# ε² = 4 · rate · t = t per axis for the frames; at T_MAX every component is within e^-6 of
# its equilibrium.
VOLATILITY, REVERSION = 1.25, 0.5  # nm per √time, 1 / time
PROCESS = {"pos": bd.OrnsteinUhlenbeck(mean=0.0, volatility=VOLATILITY, reversion=REVERSION),
           "rot": bd.RotationDiffusion(rate=0.25),
           "aa": bd.UniformDiscrete(rate=0.5, k=K)}
T_MIN, T_MAX = 1e-4, 12.0

# Why the motif's centroid, and a plain OU: bd.CenteredOrnsteinUhlenbeck holds the centroid
# of all L residues by coupling every residue to every other (the projector I - 11ᵀ/L), and
# a mask puts the held residues back after each draw, so the centroid of a masked chain
# drifts and a step is no longer the bridge of any forward law (its docstring says so). Here
# the motif itself fixes the translation (and the orientation): every chain is moved into its
# motif's frame, the motif's centroid at the origin and the frame of residue 10 the identity,
# the motif is held, and the 22 free residues diffuse independently of it under a plain OU
# towards N(0, 1.25²) around the motif. Masks are then exact (held residues never meet the
# noise), and a network without built-in equivariance need not learn rotations.


# ---------------------------------------------------------------- data

def _segments(n, generator):
    """Secondary structure (n, L + 2): helices of 7-14 and strands of 4-8 residues, each
    followed by a loop of 2-4 (one extra residue at each end serves the frames)."""
    def draw(low, high):
        return int(torch.randint(low, high, (), generator=generator))

    labels = torch.full((n, L + 2), LOOP)
    for chain in labels:  # a few segments per chain: cheap, and done once
        i = 0
        while i < L + 2:
            kind = draw(0, 2)
            length = draw(7, 15) if kind == HELIX else draw(4, 9)
            chain[i:i + length] = kind
            i += length + draw(2, 5)
    return labels


def _place(a, b, c, angle, torsion):
    """The atom at CA_CA from c with bond angle (b, c, new) and dihedral (a, b, c, new)."""
    bc = normalize(c - b, dim=-1)
    n = normalize(torch.linalg.cross(b - a, bc), dim=-1)
    step = torch.stack([-angle.cos(), angle.sin() * torsion.cos(), angle.sin() * torsion.sin()],
                       dim=-1) * CA_CA
    return c + step[:, :1] * bc + step[:, 1:2] * torch.linalg.cross(n, bc) + step[:, 2:] * n


def frames(ca):
    """Backbone frames (..., m - 2, 4) of the inner residues of CA traces (..., m, 3):
    Gram-Schmidt of CA(i+1) - CA(i) and CA(i-1) - CA(i), as unit quaternions (XYZW)."""
    centre = ca[..., 1:-1, :]
    e1 = normalize(ca[..., 2:, :] - centre, dim=-1)
    back = ca[..., :-2, :] - centre
    e2 = normalize(back - (back * e1).sum(-1, keepdim=True) * e1, dim=-1)
    matrix = torch.stack([e1, e2, torch.linalg.cross(e1, e2)], dim=-1)  # columns e1, e2, e3
    return roma.rotmat_to_unitquat(matrix)


def _by_structure(labels, helix, strand, loop):
    return torch.where(labels == HELIX, helix, torch.where(labels == STRAND, strand, loop))


def _trace(angle, torsion):
    """CA traces (n, m, 3) with the given bond angles and dihedrals (n, m), in radians: atom i
    is placed from atoms i-3..i-1 with angle[i-1] and torsion[i-1]."""
    n, m = angle.shape
    first = torch.stack([-angle[:, 1].cos(), angle[:, 1].sin(), torch.zeros(n)], dim=-1)
    ca = [torch.zeros(n, 3), torch.tensor([CA_CA, 0.0, 0.0]).expand(n, 3)]
    ca.append(ca[1] + CA_CA * first)
    for i in range(3, m):  # one step per residue, all chains at once
        ca.append(_place(ca[i - 3], ca[i - 2], ca[i - 1], angle[:, i - 1], torsion[:, i - 1]))
    return torch.stack(ca, dim=1)


def make_chains(n, generator):
    """n chains on the CPU, in the motif's frame (its centroid at 0, the frame of its last
    residue the identity): {"pos": (n, L, 3) in nm, "rot": (n, L, 4), "aa": (n, L)}.

    Ideal helices (CA bond angle 91°, dihedral 50°) and strands (120°, -170°) with 4° and 8°
    of noise, loops of random angles (85-130°) and dihedrals; residue types from the
    alphabet of the residue's structure 85% of the time, else from any alphabet.
    """
    labels = _segments(n, generator)
    shape = labels.shape

    def degrees(mean, spread):
        return (mean + spread * torch.randn(shape, generator=generator)).deg2rad()

    angle = degrees(_by_structure(labels, 91.0, 120.0,
                                  85 + 45 * torch.rand(shape, generator=generator)), 4.0)
    torsion = degrees(_by_structure(labels, 50.0, -170.0,
                                    360 * torch.rand(shape, generator=generator)), 8.0)
    ca = _trace(angle, torsion)
    ca = ca - ca[:, 1:MOTIF + 1].mean(dim=1, keepdim=True)
    ca = ca @ roma.unitquat_to_rotmat(frames(ca)[:, MOTIF - 1])  # rows: x -> R_10ᵀ x
    labels = labels[:, 1:-1]
    group = torch.where(torch.rand(n, L, generator=generator) < 0.85, labels,
                        torch.randint(3, (n, L), generator=generator))
    aa = 3 * group + torch.randint(3, (n, L), generator=generator)
    return {"pos": ca[:, 1:-1], "rot": frames(ca), "aa": aa}


def motif_held(chains):
    """The chains as bd.Masked with residues 1-10 held (mask False) in every component."""
    free = torch.arange(L, device=chains["aa"].device) >= MOTIF
    return {key: bd.masked(x, free.expand(x.shape[0], L)) for key, x in chains.items()}


# ---------------------------------------------------------------- model

REACH = 4     # each token sees the offsets to the residues up to 4 before and after it
N_RADIAL = 8  # radial basis functions of distances (0-3 nm) for the attention biases


def neighbour_features(pos):
    """Local geometry (..., L, 8 · REACH): the vectors from each residue to the REACH
    residues before and after it, and their lengths (zeros past the ends), which the model
    would otherwise have to work out from absolute positions."""
    index = torch.arange(L, device=pos.device)
    offsets = []
    for k in [*range(-REACH, 0), *range(1, REACH + 1)]:
        inside = ((index + k >= 0) & (index + k < L))[:, None]
        offsets.append(torch.where(inside, pos.roll(-k, dims=-2) - pos, 0))  # pos[i + k] - pos[i]
    lengths = [offset.norm(dim=-1, keepdim=True) for offset in offsets]
    return torch.cat(offsets + lengths, dim=-1)


def rotation_features(q):
    """The 16 products q_i q_j of quaternions (..., 4): the same for q and -q, zero for zeros
    (the first self-conditioning input)."""
    return (q[..., :, None] * q[..., None, :]).flatten(-2)


class Denoiser(nn.Module):
    """x0 of all three components from (x_t, x0_prev, t), one token per residue.

    Each token holds the residue's position, local geometry, rotation features and one-hot
    type at x_t, the position, rotation features and type probabilities of the previous
    estimate, whether it is held, a learned embedding of its index and Fourier features of
    log t. A TransformerEncoder mixes the tokens, its attention biased by the distances at
    x_t and the separations along the chain. Outputs: positions a_t x_t + √v_t · output (nm;
    a_t x_t is E[x0 | x_t] for data spread like the equilibrium, so the network learns what
    is left, in units of the noise), frames from two output vectors made orthonormal (Zhou
    et al. 2019: continuous, unlike a quaternion) and type logits (..., K).
    Shapes: positions (B, L, 3), frames (B, L, 4), types (B, L) or probabilities (B, L, K).
    """

    def __init__(self, width=64, layers=3, heads=4, n_features=32):
        super().__init__()
        self.time_features = bd.RandomFourierFeatures(n_features, 0.5)
        self.embed = nn.Linear(2 * (3 + 16 + K) + 8 * REACH + 1, width)
        self.embed_time = nn.Linear(n_features, width)
        self.index = nn.Parameter(0.1 * torch.randn(L, width))
        # attention biases, one per head: from the distance between residues at x_t (in radial
        # basis functions, gated by t) and from their separation along the chain
        self.distance_bias = nn.Linear(N_RADIAL, heads)
        self.distance_gate = nn.Linear(n_features, heads)
        self.separation_bias = nn.Parameter(torch.zeros(heads, 2 * L - 1))
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 3 + 6 + K))

    def forward(self, x_t, x0_prev, t):
        pos, rot, aa = x_t["pos"], x_t["rot"], x_t["aa"]
        batch = pos.shape[0]
        held = (torch.arange(L, device=pos.device) < MOTIF).to(pos.dtype).expand(batch, L)
        tokens = torch.cat([pos, neighbour_features(pos), rotation_features(rot),
                            one_hot(aa, K).to(pos.dtype), x0_prev["pos"],
                            rotation_features(x0_prev["rot"]),
                            x0_prev["aa"], held[..., None]], dim=-1)
        t = t.expand(batch)  # (B,) in training, 0-d when sampling
        features = self.time_features(t.log())
        time = self.embed_time(features)[:, None]
        bias = self.attention_bias(pos, features)
        out = self.head(self.encoder(self.embed(tokens) + self.index + time, mask=bias))
        decay, variance = position_law(t[:, None, None])
        matrix = roma.special_gramschmidt(out[..., 3:9].unflatten(-1, (3, 2)), epsilon=1e-6)
        return {"pos": decay * pos + variance.sqrt() * out[..., :3],
                "rot": roma.rotmat_to_unitquat(matrix), "aa": out[..., 9:]}

    def attention_bias(self, pos, time_features):
        """Additive attention scores (B · heads, L, L) from distances and chain separations."""
        distance = (pos[:, :, None] - pos[:, None]).norm(dim=-1)
        centres = torch.linspace(0, 3, N_RADIAL, device=pos.device, dtype=pos.dtype)
        radial = torch.exp(-((distance[..., None] - centres) / 0.4) ** 2)
        gate = self.distance_gate(time_features)[:, None, None]  # (B, 1, 1, heads)
        index = torch.arange(L, device=pos.device)
        separation = self.separation_bias[:, index[:, None] - index[None] + L - 1]
        bias = (gate * self.distance_bias(radial)).permute(0, 3, 1, 2) + separation
        return bias.reshape(-1, L, L)


def position_law(t):
    """(a_t, v_t) of the positions' OU at times t (any shape): x_t ~ N(a_t x0, v_t)."""
    theta = REVERSION
    return torch.exp(-theta * t), -VOLATILITY ** 2 * torch.expm1(-2 * theta * t) / (2 * theta)


def position_scaler(process, t):
    """v_t for positions, so that the network's position output (in units of √v_t) counts
    alike at every t, as in EDM (Karras et al. 2022); the others keep Diffusions.jl's default."""
    return position_law(t)[1]


def training_step(model, optimizer, data, batch_size, generator):
    """One step of Adam on the joint standard loss of the free residues, self-conditioned."""
    dev = data["pos"].device
    index = torch.randint(len(data["pos"]), (batch_size,), generator=generator, device=dev)
    x0 = motif_held({key: x[index] for key, x in data.items()})
    t = T_MIN * (T_MAX / T_MIN) ** torch.rand(batch_size, generator=generator, device=dev)
    x_t = bd.unmasked(bd.sample_forward(PROCESS, t, x0, generator=generator))
    x0_prev = bd.self_conditioning_input(model, x_t, t, generator=generator, process=PROCESS)
    loss = bd.standard_loss(PROCESS, t, model(x_t, x0_prev, t), x0,  # free residues only
                            scaler={"pos": position_scaler, "rot": None, "aa": None})
    optimizer.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss.detach()


LR = 3e-3  # the peak of a one-cycle schedule


def train(model, data, steps, batch_size, generator, verbose=True):
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    lr_schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, LR, total_steps=steps,
                                                      pct_start=0.1)
    for step in range(1, steps + 1):
        loss = training_step(model, optimizer, data, batch_size, generator)
        lr_schedule.step()
        if verbose and step % max(steps // 10, 1) == 0:
            print(f"step {step:5d}  loss {loss.item():.4f}")


def scaffold(model, motifs, n_steps, generator):
    """Scaffolds around the motifs of ``motifs`` (a dict of chains; only residues 1-10 are
    read): the backward chain from the equilibrium, residues 1-10 held, over n_steps times."""
    dev = motifs["pos"].device
    timesteps = bd.time_schedule(torch.exp, T_MIN, T_MAX, n_steps, finv=math.log).to(dev)
    x_T = bd.sample_equilibrium(PROCESS, motif_held(motifs), generator=generator)
    with torch.no_grad():
        return bd.unmasked(bd.sample_backward(bd.SelfConditioned(model, PROCESS), PROCESS,
                                              timesteps, x_T, generator=generator))


# ---------------------------------------------------------------- scores

def dihedrals(ca):
    """CA virtual dihedrals (..., L - 3) of traces (..., L, 3), in degrees."""
    a, b, c, d = ca[..., :-3, :], ca[..., 1:-2, :], ca[..., 2:-1, :], ca[..., 3:, :]
    axis = normalize(c - b, dim=-1)
    v = (a - b) - ((a - b) * axis).sum(-1, keepdim=True) * axis
    w = (d - c) - ((d - c) * axis).sum(-1, keepdim=True) * axis
    y = (torch.linalg.cross(axis, v) * w).sum(-1)
    return torch.atan2(y, (v * w).sum(-1)).rad2deg()


def bond_angles(ca):
    """CA virtual bond angles (..., L - 2) at residues 2..L-1, in degrees."""
    back = normalize(ca[..., :-2, :] - ca[..., 1:-1, :], dim=-1)
    ahead = normalize(ca[..., 2:, :] - ca[..., 1:-1, :], dim=-1)
    return (back * ahead).sum(-1).clamp(-1, 1).acos().rad2deg()


def helical(ca):
    """Whether each CA quadruple (i, ..., i+3) is helical (..., L - 3): dihedral 25-75° and
    both bond angles 75-105° (ideal helices: 50° and 91°)."""
    angle = bond_angles(ca)
    right = (angle > 75) & (angle < 105)
    return (dihedrals(ca) - 50).abs().lt(25) & right[..., :-1] & right[..., 1:]


def scores(chains):
    """Mean scores of the scaffolds (residues 11-32 and their bonds) of a dict of chains:

    * ``bond error``: mean |CA(i+1) - CA(i)| - 3.8 A, in nm (data: 0);
    * ``helix``: the fraction of helical CA quadruples;
    * ``frame error``: the mean angle (rad) between each residue's frame and the frame that
      Gram-Schmidt gives from its generated CA trace (data: 0; random frames: 2.2);
    * ``types``: the fraction of residues of helical geometry with a helix-favouring type.
    """
    ca, rot, aa = chains["pos"].float(), chains["rot"].float(), chains["aa"]
    bonds = (ca[:, MOTIF:] - ca[:, MOTIF - 1:-1]).norm(dim=-1)  # bonds (10, 11) ... (31, 32)
    helix = helical(ca)[:, MOTIF - 1:]  # quadruples from (10, ..., 13) on
    # residue i of frames(ca) is residue i + 1 of the chain: compare residues 11..31
    angle = roma.unitquat_geodesic_distance(rot[:, MOTIF:-1], frames(ca)[:, MOTIF - 1:])
    helix_type = aa[:, MOTIF + 1:MOTIF + 1 + helix.shape[1]] < 3  # the quadruple's third
    return {"bond error": (bonds - CA_CA).abs().mean().item(),
            "helix": helix.float().mean().item(),
            "frame error": angle.mean().item(),
            "types": (helix_type & helix).sum().item() / max(helix.sum().item(), 1)}


# ---------------------------------------------------------------- figure

COLOURS = {HELIX: "tab:red", STRAND: "tab:blue", LOOP: "0.6"}


def draw_chain(ax, chain, title):
    """A CA trace in 3-D: the motif in black, residues coloured by their type's alphabet."""
    ca, group = chain["pos"].cpu(), (chain["aa"] // 3).cpu()
    ax.plot(*ca[:MOTIF + 1].T, color="k", lw=2.5)
    ax.plot(*ca[MOTIF:].T, color="0.4", lw=1)
    ax.scatter(*ca.T, c=[COLOURS[int(g)] for g in group], s=10, depthshade=False)
    ax.set_title(title, fontsize=9)
    ax.set(xticks=[], yticks=[], zticks=[])
    centre, reach = ca.mean(0), (ca - ca.mean(0)).abs().max().item()
    for axis, c in zip("xyz", centre):
        getattr(ax, f"set_{axis}lim")(c - reach, c + reach)


def plot(data, trained, untrained, out):
    """Four data chains above the scaffolds generated around their motifs, then histograms of
    neighbour distances and CA dihedrals of the scaffolds."""
    fig = plt.figure(figsize=(12, 9.5))
    grid = fig.add_gridspec(3, 4, height_ratios=[1, 1, 0.8])
    for col in range(4):
        for row, (chains, name) in enumerate([(data, "data"), (trained, "generated")]):
            ax = fig.add_subplot(grid[row, col], projection="3d")
            draw_chain(ax, {key: x[col] for key, x in chains.items()},
                       f"{name} #{col + 1}" + (" (same motif)" if row else ""))
    distance, torsion = fig.add_subplot(grid[2, :2]), fig.add_subplot(grid[2, 2:])
    distance.axvline(CA_CA, color="k", lw=1.2, label="data (all 0.38)")
    for chains, name, style in [(data, "data", "k-"), (trained, "trained", "C1-"),
                                (untrained, "untrained", "C0:")]:
        ca = chains["pos"].cpu().float()
        if chains is not data:
            bonds = (ca[:, MOTIF:] - ca[:, MOTIF - 1:-1]).norm(dim=-1).flatten()
            counts, edges = torch.histogram(bonds.clamp(max=1), bins=50, range=(0, 1),
                                            density=True)
            distance.plot(edges[1:] - 0.01, counts, style, lw=1.2, label=name)
        counts, edges = torch.histogram(dihedrals(ca)[:, MOTIF - 1:].flatten(), bins=72,
                                        range=(-180, 180), density=True)
        torsion.plot(edges[1:] - 2.5, counts, style, lw=1.2, label=name)
    distance.set(xlabel="|CA(i+1) - CA(i)| in the scaffolds (nm; the last bin: 1 and over)",
                 yticks=[])
    torsion.set(xlabel="CA dihedral in the scaffolds (deg): helix 50, strand -170", yticks=[])
    distance.legend()
    fig.suptitle("motif scaffolding: residues 1-10 (black) held, 11-32 generated; "
                 "red/blue/grey: helix/strand/loop types")
    fig.tight_layout()
    save(fig, out, "protein_frames.png")


QUICK = dict(steps=150, batch_size=32, n_chains=2048, n_samples=32, n_timesteps=10)
FULL = dict(steps=10000, batch_size=64, n_chains=20000, n_samples=256, n_timesteps=100)


def experiment(steps, batch_size, n_chains, n_samples, n_timesteps, dev, seed=0,
               verbose=True):
    """Train a model, then scaffold the motifs of ``n_samples`` fresh chains with it and with
    the same network untrained (its initial weights).

    Returns (held-out chains, trained scaffolds, untrained scaffolds, timings in seconds).
    """
    torch.manual_seed(seed)  # the initial weights and Fourier frequencies
    generator = torch.Generator(dev).manual_seed(seed)
    host = torch.Generator().manual_seed(seed)  # the data are made on the CPU
    data = {key: x.to(dev) for key, x in make_chains(n_chains, host).items()}
    held_out = {key: x.to(dev) for key, x in make_chains(n_samples, host).items()}
    untrained = Denoiser().to(dev)
    model = Denoiser().to(dev)
    model.load_state_dict(untrained.state_dict())
    if verbose:
        print(f"training for {steps} steps on {dev}")
    start = time.perf_counter()
    train(model, data, steps, batch_size, generator, verbose)
    trained_at = time.perf_counter()
    samples = scaffold(model, held_out, n_timesteps, generator)
    sampled_at = time.perf_counter()
    baseline = scaffold(untrained, held_out, n_timesteps, generator)
    timings = {"training": trained_at - start, "sampling": sampled_at - trained_at}
    return held_out, samples, baseline, timings


def main():
    args = parse_args(__doc__.splitlines()[0])
    config = QUICK if args.quick else FULL
    held_out, samples, baseline, timings = experiment(**config, dev=device())
    print(f"training {timings['training']:.1f} s, sampling {timings['sampling']:.1f} s "
          f"({config['n_samples']} scaffolds, {config['n_timesteps'] - 1} steps)")
    for name, chains in [("data", held_out), ("trained", samples), ("untrained", baseline)]:
        line = "  ".join(f"{key} {value:.3f}" for key, value in scores(chains).items())
        print(f"{name:>9}: {line}")
    plot(held_out, samples, baseline, args.out)


if __name__ == "__main__":
    main()

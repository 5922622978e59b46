"""fedjax_comp: a JAX benchmark suite for communication-efficient federated learning.

Data flow (see WORKSPACE.md): data -> clients -> codecs -> aggregation ->
server -> benchmarks; `distributed` (sync/local SGD, DGA) and `network`
(the simulated clock) serve the latency and in-center comparisons. Importing the package pins the PRNG settings (see
`fedjax_comp.keys`).
"""

from fedjax_comp import keys  # first: pins the PRNG settings
from fedjax_comp.aggregation import ClientSums, sum_client_updates, weighted_mean
from fedjax_comp.clients import (ClientMetrics, make_client_update, masked_cross_entropy)
from fedjax_comp.codecs import (Codec, Structure, chain, hadamard, identity, low_rank,
                                payload_bits, quantize, random_mask, subsample, uplink_bits)
from fedjax_comp.data import ClientArrays, FederatedDataset, load_federated
from fedjax_comp import distributed, network  # worker-based training; the simulated clock
from fedjax_comp.evaluation import EvalMetrics, batch_for_eval, evaluate
from fedjax_comp.fedavg import (FederatedAlgorithm, RoundMetrics, ServerState, fed_avg,
                                loop_round_sums)
from fedjax_comp.models import MODELS, Model, get_model, num_params
from fedjax_comp.server import SERVER_OPTIMIZERS, server_optimizer
from fedjax_comp.sharding import clients_mesh, replicate

__version__ = "0.1.0"

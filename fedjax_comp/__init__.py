"""fedjax_comp: a JAX benchmark suite for communication-efficient federated learning.

Data flow (see WORKSPACE.md): data (sources, partitions, client stores) ->
client_update (local training, `batching`) -> codecs -> algorithms (the
round engine, FedAvg/FedProx/SCAFFOLD, server optimizers) -> experiment
(the run loop, the simulated clock, checkpoints, results). Importing the
package pins the PRNG settings (see `fedjax_comp.keys`).
"""

from fedjax_comp import keys  # first: pins the PRNG settings
from fedjax_comp import algorithms, codecs, models, sampling, sharding
from fedjax_comp.algorithms import (ALGORITHMS, SERVER_OPTIMIZERS, Cohort, FederatedAlgorithm,
                                    RoundMetrics, RoundOutput, ServerState, fed_avg, fed_prox,
                                    scaffold, server_optimizer)
from fedjax_comp.client_update import ClientMetrics, LocalSchedule, make_client_update
from fedjax_comp.codecs import (Codec, Structure, chain, hadamard, identity, low_rank,
                                payload_bits, quantize, random_mask, subsample, uplink_bits)
from fedjax_comp.data import ClientArrays, FederatedDataset, load_federated
from fedjax_comp.data.stores import DeviceStore
from fedjax_comp import experiment
from fedjax_comp.experiment import History, run_rounds
from fedjax_comp.evaluation import batch_for_eval, evaluate
from fedjax_comp.models import MODELS, Model, get_model, num_params
from fedjax_comp.sharding import clients_mesh, replicate

__version__ = "0.1.0"

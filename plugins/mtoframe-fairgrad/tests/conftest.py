import torch

# The test machine's cores are shared: an intra-op thread pool then waits on descheduled
# threads (a 3×300 matmul took 47 ms with 2 threads, 4 µs with 1). Tiny tensors need one thread.
torch.set_num_threads(1)

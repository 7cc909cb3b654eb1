// The CIFAR-10 example on the GPU: cifar10.cpp compiled by nvcc with the ds::Cuda device
// policy, every dtype and ZeRO stage of the dense Net in one translation unit (so each
// kernel is compiled once), or with CIFAR10_MOE=1 the --moe Net's stages of one dtype
// (CIFAR10_UNIT_DTYPE), as on the CPU; cifar10_main.cpp is the main of each
// cifar10[_moe]_<dtype>_zero<stage>_cuda, which runs its own policies only.
#define CIFAR10_CUDA 1
#include "cifar10/cifar10.cpp"

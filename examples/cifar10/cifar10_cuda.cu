// The CIFAR-10 example on the GPU: cifar10.cpp compiled by nvcc with the ds::Cuda device
// policy, every dtype and ZeRO stage of the dense Net in this one translation unit (so each
// kernel is compiled once); cifar10_main.cpp is the main of each
// cifar10_<dtype>_zero<stage>_cuda, which runs its own policies only.
#define CIFAR10_CUDA 1
#include "cifar10/cifar10.cpp"

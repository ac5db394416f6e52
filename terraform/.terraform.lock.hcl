# This file is maintained automatically by "terraform init".
# Manual edits may be lost in future updates.

provider "registry.terraform.io/hashicorp/aws" {
  version     = "6.57.1"
  constraints = "~> 6.0"
  hashes = [
    "h1:1PhwBDgkDChmwHKcij5S/qo4c+Dbbl+B7CbMBvlw+IE=",
    "h1:9WkzHDNCTfnU2RGCMMM5GPQkWjQz1dpfYWGOJwNWYuY=",
    "h1:JIIHH3Vwh++KWC+vlbHWFF/L9uhyK9AGhNqJXaLjqU8=",
    "h1:Mz2BVjntgeXCYLdhPCpgTBvGNPmxJBJxqq5M4r27Hc8=",
    "h1:NQsrZB5JMWCP2p0034MXWfxMGjcP+W83VqCu4G7ejR4=",
    "h1:Q1Oiqauol2JGRIQrW1msXRD2FeAv/eSQEXvImii69R4=",
    "h1:WXndu9uKvbnmspexcbki89ZuGLt2SUyAfZ5GgQUm+QU=",
    "h1:cBe5kQttKJ4XHVLtD+nOgGrFbGyKZbOi+3K5aaGQ/lE=",
    "h1:dqzBIEn+56PBHOtZsWlk2cSGR72jsYnmH/0dg/Hw2ao=",
    "h1:f7l0DO/EUz5ZW2Ss24nKbz/9xK0wPqM49k2q4ZjFoDs=",
    "h1:fjlcHO7i4xszsEJDR0L8XSmmRzF3421/O6NZQMeaar4=",
    "h1:huBo9nBwe4b958g4eHdSFI2yKG3WUf5/bzZQ1YqYlFI=",
    "h1:lgz+9D6EZlx0QLroQ9v1s6QtLGAKD0drsBhGN+MdNwA=",
    "h1:m0Yp7O6nSTYNqYa1AeJ/ZNnclFq0CyzKIhaWnpCaqNM=",
    "h1:qJfEIPumqeWXFQIRYERKwb9+bwoAnoOeYTyafmLItik=",
    "zh:2d29e22480a81c21fb3f2fd52f9bd3ca4a82c37f3bb1b1036e881e42cddc75a1",
    "zh:33aeb08e9973199b30f8a8e48a58dc67cfb6e32879f7a1c05c521899fe718f53",
    "zh:37b7f977a7e7d45ad11d42958bc264873fb34573eee925915038ea05607abc9e",
    "zh:41ebdcf4bcd073a01d58505a5f5118b85668de357d2d9f266926923e817a1842",
    "zh:43093dfc3559c2c0467c92f48b29ae0221d52e912fce03dd77abd90806fdcc7d",
    "zh:63b4252933e828d3590c0c64b827ec0f8955aa52df719fe67f45a846111fccc4",
    "zh:7473b036e9f8167c7a09e4865de95d07922eae6a612b94e819d44c87ba5298de",
    "zh:783c73e66bf50a74983803e1ec6d6237bae2891f9d4fd4824cfd5350121552ae",
    "zh:83681e1d8d002048b76d7144cb96c8c8501dc973d1fee41b7579a46ad9eb04c2",
    "zh:9b12af85486a96aedd8d7984b0ff811a4b42e3d88dad1a3fb4c0b580d04fa425",
    "zh:b08b4168d4e2a81badbbe65d95f692ed3292c2b71cd00b9889a3bb7cf54c1188",
    "zh:b4320ca25f4f67beebcbd6563ece2e490bd9dcb0a7e59b5d7a437ddaf53768ed",
    "zh:d7f99254d6e05bac3dffae9b437c47cd807b4e66d941e56364be0a28ead418bd",
    "zh:e433e91689758a341c91840cc7b5d3a3c5089004766d20659d57199b88ad8a5f",
    "zh:e4c5a9b0f96a5fe2b5ed5592d4c2ac33240cf5308bcb14e52d6f2e0eb183a014",
    "zh:fc4b554ae98e40e3ab6878ec9501ba2b05213d30668ee357d48b207993ffbe03",
  ]
}
